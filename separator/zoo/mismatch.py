"""Readable errors for a checkpoint that does not fit its model: which keys, which fields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

# Which config fields shape which parameters (for mismatch messages).
_HINTS = (
    (r"^band_split\.", "freqs_per_bands/num_bands, stereo, stft_n_fft, dim"),
    (
        r"^mask_estimators\.\d+\.to_freqs\.\d+\.0\.",
        "mask_estimator_depth, mlp_expansion_factor, dim, freqs_per_bands/num_bands, stereo",
    ),
    (r"^mask_estimators\.", "num_stems (training.instruments / target_instrument)"),
    (r"^layers\.\d+\.\d+\.layers\.\d+\.0\.(to_qkv|to_out|to_gates|rotary)", "dim, heads, dim_head"),
    (
        r"^layers\.\d+\.\d+\.norm\.|^final_norm",
        "architecture (BS has final_norm; Mel has a norm per transformer)",
    ),
    (
        r"^layers\.",
        "depth, time_transformer_depth, freq_transformer_depth, linear_transformer_depth",
    ),
)


def mismatch_message(
    expected: Mapping[str, Tensor],
    sd: Mapping[str, Tensor],
    source: Path,
    config: Path | None = None,
) -> str | None:
    """None if `sd` has exactly the keys and shapes of `expected`, else a one-line explanation.

    It names the first mismatched keys and the config fields that shape them; for the RoFormers
    it also says how many stems and layers the checkpoint has.
    """
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if wrong:
        shown = ", ".join(
            f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:3]
        )
        parts.append(f"{len(wrong)} with other shapes ({shown})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    fields: list[str] = []
    count = {
        name: [
            len({k.split(".")[1] for k in keys if k.startswith(prefix)}) for keys in (sd, expected)
        ]
        for name, prefix in (("stems", "mask_estimators."), ("depth", "layers."))
    }
    if count["stems"][0] != count["stems"][1]:
        fields.append("num_stems (training.instruments / target_instrument)")
    if count["depth"][0] != count["depth"][1]:
        fields.append("depth")
    for key in (wrong + missing + unexpected)[:20]:
        for pattern, hint in _HINTS:
            if re.search(pattern, key):
                if hint not in fields:
                    fields.append(hint)
                break
    seen = ""
    if any(k.startswith("mask_estimators.") for k in expected):  # a RoFormer
        seen = f"; the checkpoint has {count['stems'][0]} stem(s) and depth {count['depth'][0]}"
    cfg = f" with config {config}" if config else ""
    check = f" Check model.{'; model.'.join(fields)}" if fields else ""
    return f"{source}: checkpoint does not fit the model{cfg}: {'; '.join(parts)}.{check}{seen}"
