"""DiffQ-quantized demucs states (`mdx_q`, `mdx_extra_q`), decoded without the diffq package.

`restore_quantized(model, state, kind)` writes the float weights of a quantized state (what
`demucs.states.serialize_model` stores for a DiffQ/Uniform-quantized model) into a freshly built
module. Errors are the plain exceptions of a malformed state; the package reader turns them into
one-line `CheckpointError`s naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

# --- DiffQ (mdx_q, mdx_extra_q) -------------------------------------------------------------
# Decodes the quantized states of diffq 0.2.4 (PyPI) without the diffq package, from its
# documented format: `base.BaseQuantizer` selects the parameters (walking `named_modules()`,
# each module's own parameters in order: those with more than min_size MB are quantized, the
# others kept as float16 or float32 lists), `get_quantized_state` stores them in that order, and
# the levels are bit-packed (Cython `bitpack`: int64 blocks of 64 values x 32 lanes, or the
# `torch_pack` layout). Our modules list parameters in demucs's order (tested), which is what
# makes the selection line up. Defaults are those of the quantizer constructors, which demucs
# called as DiffQuantizer(model, min_size, group_size) and UniformQuantizer(model, bits, min_size).
_QUANTIZER_DEFAULTS = {
    "diffq": {
        "min_size": 0.01,
        "float16": False,
        "group_size": 1,
        "min_bits": 2,
        "exclude": [],
        "detect_bound": True,
    },
    "uniform": {
        "bits": 8.0,
        "min_size": 0.01,
        "float16": False,
        "exclude": [],
        "detect_bound": True,
    },
}


def _select_params(model: nn.Module, opts: Mapping[str, Any]) -> tuple[list, list, list]:
    """(quantized, float16, others) parameter lists in diffq's order (shared ones once)."""
    from fnmatch import fnmatch

    min_params = opts["min_size"] * 2**20 // 4
    quantized, small, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{name}"
            excluded = any(fnmatch(full, p) or fnmatch(name, p) for p in opts["exclude"])
            if id(param) in seen and opts["detect_bound"]:
                continue
            seen.add(id(param))
            (small if param.numel() <= min_params or excluded else quantized).append(param)
    return (quantized, small, []) if opts["float16"] else (quantized, [], small)


def _unpack_bitpack(packed: Tensor, length: int) -> Tensor:
    """diffq's Cython `bitpack.unpack`: (lines, nbits, 32) int64 -> (length,) int64 values.

    Value i of line l sits at bit (i // 32) of word [l, b, i % 32] for each value bit b."""
    lines, nbits, lanes = packed.shape
    shifts = torch.arange(64, dtype=torch.int64).view(1, 64, 1)
    out = torch.zeros(lines, 64, lanes, dtype=torch.int64)
    for bit in range(nbits):  # <= 15 value bits, each a vectorised pass
        out |= ((packed[:, bit].unsqueeze(1) >> shifts) & 1) << bit
    return out.reshape(-1)[:length]


def _unpack_torch(packed: Tensor, length: int) -> Tensor:
    """diffq's `torch_pack.unpack`: (nbits, groups) words -> (length,) int64 values."""
    nbits, groups = packed.shape
    storage = packed.element_size() * 8
    shifts = torch.arange(storage, dtype=torch.int64).view(storage, 1)
    words = packed.to(torch.int64)
    out = torch.zeros(storage, groups, dtype=torch.int64)
    for bit in range(nbits):
        out |= ((words[bit].unsqueeze(0) >> shifts) & 1) << bit
    return out.reshape(-1)[:length]


def _levels(param: Tensor, quantized: Any, kind: str, opts: Mapping, unpack) -> tuple:
    """(levels, (min, max), bits) of one quantized parameter, unpacked as diffq does."""
    if kind == "uniform":
        packed, scales = quantized
        levels = unpack(packed, param.numel()).view_as(param) if unpack else packed
        return levels, scales, torch.tensor(opts["bits"])
    if not opts["group_size"]:
        raise ValueError("group_size 0 states cannot be restored by diffq 0.2.4 either")
    packed_levels, scales, packed_bits = quantized
    if unpack is None:  # stored unpacked
        return packed_levels, scales, packed_bits.view(-1, 1)
    groups = param.numel() // opts["group_size"]
    bits = unpack(packed_bits, groups) + opts["min_bits"]
    levels = torch.zeros(groups, opts["group_size"], dtype=torch.int64)
    for index, packed in enumerate(packed_levels):  # one entry per bit width 1..14
        rows = bits == index + 1
        if packed is not None:
            levels[rows] = unpack(packed, int(rows.sum()) * opts["group_size"]).view(
                -1, opts["group_size"]
            )
    return levels, scales, bits.view(-1, 1)


def restore_quantized(model: nn.Module, state: Mapping[str, Any], kind: str) -> None:
    """Write the float weights of a diffq quantized state into `model`'s parameters."""
    meta = state["meta"]
    opts = dict(_QUANTIZER_DEFAULTS[kind], **dict(meta.get("init_kwargs") or {}))
    quantized, half, others = _select_params(model, opts)
    lists = (state["quantized"], state["float16"], state["others"])
    if [len(x) for x in lists] != [len(quantized), len(half), len(others)]:
        raise ValueError(
            f"{len(lists[0])}/{len(lists[1])}/{len(lists[2])} quantized/float16/other tensors "
            f"for a model with {len(quantized)}/{len(half)}/{len(others)}"
        )
    unpack = None
    if meta.get("packed", False):
        unpack = _unpack_torch if meta.get("torch_pack", False) else _unpack_bitpack
    with torch.no_grad():
        for param, value in zip(half + others, [*state["float16"], *state["others"]]):
            param.copy_(value.view_as(param))
        for param, value in zip(quantized, state["quantized"]):
            levels, (low, high), bits = _levels(param, value, kind, opts, unpack)
            unit = 1 / (2 ** bits.float() - 1)  # diffq's uniform_unquantize, same operations
            param.copy_((levels.float() * unit * (high - low) + low).view_as(param))
