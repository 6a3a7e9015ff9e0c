"""Write tests/fixtures/msst_configs/state_keys.json: MSST's state-dict layout for real configs.

For each config (and a few variants of real configs that switch on options no shipped config
uses), MSST's own class is built from the `model:` section and its state dict summarised: the
number of entries, the sha256 of the sorted "key shape" lines, and the key patterns (indices
replaced by #). `tests/test_nn_msst_configs.py` checks our modules against it without MSST.

    python3 benchmarks/msst_state_keys.py     # needs the mirror and MSST_DEPS: msst_reference.py

`sage_attention` is dropped before MSST builds a config: ccc011a no longer accepts it, and the
revisions that did (2025-01 to 2026-01) had the same parameters (it chose a kernel).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
import yaml
from msst_reference import msst_classes

FOLDER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "msst_configs"
# config file -> model_type (MSST YAMLs do not name it; MSST takes it on its command line)
CONFIGS = {
    "config_vocals_bs_roformer.yaml": "bs_roformer",
    "config_musdb18_bs_roformer.yaml": "bs_roformer",
    "config_musdb18_bs_roformer_384_8_2_485100_sage.yaml": "bs_roformer",
    "config_musdb18_bs_roformer_with_lora.yaml": "bs_roformer",
    "viperx_model_bs_roformer_ep_317_sdr_12.9755.yaml": "bs_roformer",
    "config_vocals_mel_band_roformer.yaml": "mel_band_roformer",
    "config_musdb18_mel_band_roformer.yaml": "mel_band_roformer",
    "config_musdb18_mel_band_roformer_all_stems.yaml": "mel_band_roformer",
    "config_musdb18_mel_band_roformer_sage.yaml": "mel_band_roformer",
    "config_vocals_mel_band_roformer_kj.yaml": "mel_band_roformer",
    "viperx_model_mel_band_roformer_ep_3005_sdr_11.4360.yaml": "mel_band_roformer",
    "config_vocals_bs_conformer.yaml": "bs_conformer",
    "config_vocals_mel_band_conformer.yaml": "mel_band_conformer",
}
# (name, config file, model_type, keys to set): real shapes with options no shipped config uses.
VARIANTS = [
    ("bs_pope", "config_vocals_bs_roformer.yaml", "bs_roformer", {"use_pope": True}),
    ("mel_pope", "config_vocals_mel_band_roformer.yaml", "mel_band_roformer", {"use_pope": True}),
    (
        "bs_experimental_vrl",
        "config_vocals_bs_roformer.yaml",
        "bs_roformer_experimental",
        {"use_value_residual_learning": True, "num_residual_streams": 1},
    ),
    (
        "bs_experimental_hyper4",
        "config_vocals_bs_roformer.yaml",
        "bs_roformer_experimental",
        {"use_value_residual_learning": True, "num_residual_streams": 4},
    ),
    (
        "mel_experimental_hyper2",
        "config_vocals_mel_band_roformer.yaml",
        "mel_band_roformer_experimental",
        {"use_value_residual_learning": False, "num_residual_streams": 2},
    ),
    (
        "bs_conformer_linear",
        "config_vocals_bs_conformer.yaml",
        "bs_conformer",
        {"linear_conformer_depth": 1, "conv_kernel_size": 15},
    ),
]


def summary(state: dict[str, torch.Tensor]) -> dict:
    lines = sorted(f"{k} {tuple(v.shape)}" for k, v in state.items())
    patterns = sorted({re.sub(r"\.\d+(?=\.|$)", ".#", k) for k in state})
    return {
        "count": len(lines),
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "patterns": patterns,
    }


def main() -> None:
    classes, commit = msst_classes()
    torch.set_num_threads(1)
    jobs = [(name, name, family, {}) for name, family in CONFIGS.items()] + VARIANTS
    out = {"msst_commit": commit, "entries": {}}
    for name, file, family, overrides in jobs:
        config = yaml.load((FOLDER / file).read_text(), Loader=yaml.FullLoader)
        model = {k: v for k, v in config["model"].items() if k != "sage_attention"}
        model.update(overrides)
        with torch.no_grad():
            state = classes[family](**model).state_dict()
        entry = {"config": file, "family": family, "set": overrides, **summary(state)}
        out["entries"][name] = entry
        print(f"{name}: {family}, {entry['count']} entries")
        del state
    (FOLDER / "state_keys.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
