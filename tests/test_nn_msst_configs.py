"""Real MSST configs of the band RoFormer / Conformer families: type inference from the raw YAML,
construction on the meta device, and a state-dict layout equal to the one MSST's own class has
for the same config (tests/fixtures/msst_configs/state_keys.json, written from MSST ccc011a by
benchmarks/msst_state_keys.py). Configs MSST cannot build fail with a one-line ConfigError."""

from __future__ import annotations

import hashlib
import json
import re
import warnings

import pytest
import torch
from msst_golden import MSST_CONFIGS

from separator.errors import ConfigError
from separator.files import parse_yaml
from separator.nn import get_family, infer_msst_family, msst_model_section

KEYS = json.loads((MSST_CONFIGS / "state_keys.json").read_text())
FAMILIES = (
    "bs_roformer",
    "mel_band_roformer",
    "bs_roformer_experimental",
    "mel_band_roformer_experimental",
    "bs_conformer",
    "mel_band_conformer",
)


def read_config(name: str) -> dict:
    return parse_yaml((MSST_CONFIGS / name).read_text(), name)


def vocals_config(family: str) -> str:
    """MSST's shipped vocals config of the family's band layout and stack kind."""
    band = "mel_band" if "mel" in family else "bs"
    return f"config_vocals_{band}_{'conformer' if 'conformer' in family else 'roformer'}.yaml"


def build_meta(config: dict, family: str | None = None):
    fam = get_family(family) if family else infer_msst_family(config["model"])
    card = fam.from_msst(config)
    with torch.device("meta"):
        return fam.build(
            card["model"],
            sample_rate=card["sample_rate"],
            stems=card["stems"],
            chunk_size=card["chunk_size"],
        )


def summary(state: dict) -> dict:
    """As benchmarks/msst_state_keys.py summarises MSST's state dict."""
    lines = sorted(f"{k} {tuple(v.shape)}" for k, v in state.items())
    return {
        "count": len(lines),
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        "patterns": sorted({re.sub(r"\.\d+(?=\.|$)", ".#", k) for k in state}),
    }


@pytest.mark.parametrize("name", sorted(KEYS["entries"]))
def test_state_layout_equals_msst(name):
    entry = KEYS["entries"][name]
    config = read_config(entry["config"])
    config["model"].update(entry["set"])
    assert infer_msst_family(config["model"]).name == entry["family"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sage_attention: true in two of them
        model = build_meta(config)
    ours = summary(model.state_dict())
    assert ours["patterns"] == entry["patterns"]
    assert (ours["count"], ours["sha256"]) == (entry["count"], entry["sha256"])


def test_every_shipped_config_is_covered():
    """Each RoFormer/Conformer YAML in the folder (the other families' copies live there too) is
    either in the layout table or refused (the conv_dropout ones)."""
    listed = {e["config"] for e in KEYS["entries"].values()}
    files = {
        p.name
        for p in MSST_CONFIGS.glob("*.yaml")
        if "former" in infer_msst_family(msst_model_section(read_config(p.name))).name
    }
    assert files - listed == {
        "config_musdb18_mel_band_conformer.yaml",
        "config_musdb18_mel_band_conformer_all_stems.yaml",
    }


@pytest.mark.parametrize(
    "name",
    ["config_musdb18_mel_band_conformer.yaml", "config_musdb18_mel_band_conformer_all_stems.yaml"],
)
def test_config_msst_cannot_build_says_why(name):
    """MSST ccc011a's reachable MelBandConformer rejects conv_dropout: these YAMLs were written
    for the standalone models/mel_band_conformer.py, another layout."""
    config = read_config(name)
    assert infer_msst_family(config["model"]).name == "mel_band_conformer"
    with pytest.raises(ConfigError) as info:
        build_meta(config)
    message = str(info.value)
    assert message.startswith("model.conv_dropout: MSST's band Conformers take no conv_dropout")
    assert "\n" not in message


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_key_is_named(family):
    config = read_config(
        "config_vocals_mel_band_roformer.yaml"
        if "mel" in family
        else "config_vocals_bs_roformer.yaml"
    )
    model = config["model"]
    if "conformer" in family:  # the conformer stacks have their own depth keys
        model["time_conformer_depth"] = model.pop("time_transformer_depth")
        model["freq_conformer_depth"] = model.pop("freq_transformer_depth")
        model.pop("linear_transformer_depth")
    model["dim_heads"] = 4
    with pytest.raises(ConfigError) as info:
        build_meta(config, family)
    assert str(info.value).startswith("unknown key model.dim_heads for ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "family,key,value,expected",
    [
        ("bs_roformer_experimental", "zero_dc", True, "have no zero_dc"),
        ("mel_band_roformer_experimental", "use_pope", True, "have no PoPE"),
        ("bs_roformer_experimental", "linear_transformer_depth", 1, "cannot run in MSST's"),
        ("bs_roformer_experimental", "num_residual_streams", 0, "num_residual_streams must be"),
        ("bs_conformer", "conv_kernel_size", 30, "conv_kernel_size must be odd"),
        ("bs_conformer", "time_transformer_depth", 1, "unknown key model.time_transformer_depth"),
        ("bs_roformer", "time_conformer_depth", 1, "unknown key model.time_conformer_depth"),
    ],
)
def test_what_msst_rejects_is_a_config_error(family, key, value, expected):
    config = read_config(vocals_config(family))
    config["model"][key] = value
    with pytest.raises(ConfigError, match=expected) as info:
        build_meta(config, family)
    assert "\n" not in str(info.value)


def test_sage_attention_accepted_by_every_family():
    """sage_attention (MSST 2025-01 to 2026-01, RoFormers and Conformers) only chose a kernel."""
    for family in FAMILIES:
        config = read_config(vocals_config(family))
        config["model"]["sage_attention"] = True
        with pytest.warns(UserWarning, match="standard attention kernel"):
            model = build_meta(config, family)
        assert type(model).__name__ and model.config.num_stems == 1


def test_conformer_zero_dc_defaults_on_roformer_off():
    """MSST's Conformers zeroed DC from their start; the RoFormers only since 2025-09 (so the
    2024 checkpoints' configs, which never set it, keep it off), except PoPE configs."""
    assert build_meta(read_config("config_vocals_bs_conformer.yaml")).config.zero_dc is True
    assert build_meta(read_config("config_vocals_mel_band_conformer.yaml")).config.zero_dc is True
    bs = read_config("config_vocals_bs_roformer.yaml")
    assert build_meta(bs).config.zero_dc is False
    bs["model"]["use_pope"] = True
    assert build_meta(bs).config.zero_dc is True
    bs["model"]["zero_dc"] = False
    assert build_meta(bs).config.zero_dc is False
