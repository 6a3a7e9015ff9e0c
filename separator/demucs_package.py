"""Reading demucs `.th` packages, bag YAMLs and MSST-trained HTDemucs checkpoints, safely.

A demucs package is a `torch.save` dict {klass, args, kwargs, state, training_args, metrics}
whose `klass` is a pickled reference to the model class (and whose HTDemucs `segment` is a
`fractions.Fraction`). It is read with `torch.load(weights_only=True)` and an allow-list that
maps the three demucs class names (and, for DiffQ packages, the two quantizer class names) to
inert stand-ins defined here, plus `fractions.Fraction`. Nothing in a checkpoint is imported or
executed: any other global is refused by torch's weights-only unpickler.

Bags (`<name>.yaml`: models, weights, segment) find their members in a folder by signature,
with demucs's `LocalRepo` rule: a file `<sig>-<hex>.th` is split at its last `-`, and the hex
must prefix the file's sha256.

Errors are `CheckpointError` (or `ConfigError` for bad configs), one line naming the file.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from separator.errors import CheckpointError, ConfigError
from separator.nn import demucs as demucs_nn
from separator.nn.demucs.demucs_v2 import rename_pre_v3


class _HTDemucsRef:
    """Stand-in for `demucs.htdemucs.HTDemucs` in a package's pickle (never instantiated)."""


class _HDemucsRef:
    """Stand-in for `demucs.hdemucs.HDemucs`."""


class _DemucsRef:
    """Stand-in for `demucs.demucs.Demucs`."""


class _DiffQuantizerRef:
    """Stand-in for `diffq.diffq.DiffQuantizer` (the `meta.klass` of a quantized state)."""


class _UniformQuantizerRef:
    """Stand-in for `diffq.uniform.UniformQuantizer`."""


_KLASS_REFS: dict[type, str] = {
    _HTDemucsRef: "htdemucs",
    _HDemucsRef: "hdemucs",
    _DemucsRef: "demucs",
}
_QUANTIZER_REFS: dict[type, str] = {_DiffQuantizerRef: "diffq", _UniformQuantizerRef: "uniform"}
_ALLOWED = [
    (_HTDemucsRef, "demucs.htdemucs.HTDemucs"),
    (_HDemucsRef, "demucs.hdemucs.HDemucs"),
    (_DemucsRef, "demucs.demucs.Demucs"),
    (_DiffQuantizerRef, "diffq.diffq.DiffQuantizer"),
    (_UniformQuantizerRef, "diffq.uniform.UniformQuantizer"),
    Fraction,
]
_STATE_KEYS = ("state", "state_dict", "model_state_dict")


@dataclass
class DemucsPackage:
    """What a `.th` package holds, with the state as float32 tensors.

    klass: "htdemucs", "hdemucs" or "demucs" (the family's card `klass`).
    kwargs: the constructor arguments as stored (`segment` may be a Fraction).
    extras: `training_args`, `metrics` and any other top-level entry, as plain data.
    """

    path: Path
    klass: str
    args: tuple
    kwargs: dict[str, Any]
    state: dict[str, Tensor]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, Any]:
        """The card `model:` mapping {klass, kwargs} for this package."""
        return {"klass": self.klass, "kwargs": dict(self.kwargs)}


# --- the safe unpickler -------------------------------------------------------------------------
def safe_load(path: str | Path) -> Any:
    """torch.load(weights_only=True) with the demucs stand-ins allowed; refusals are one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"references {found.group(1)}, which" if found else "needs Python objects that"
        raise CheckpointError(
            f"{path}: refused: the checkpoint {what} is not a demucs model class or plain data; "
            "nothing from it was imported or run"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None


def _float_state(state: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """name -> tensor, floating tensors as float32 (packages store fp16)."""
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: the package has no state dict")
    out = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state entry {name!r} is not a named tensor")
        out[name] = value.float() if value.is_floating_point() else value
    return out


# --- packages -----------------------------------------------------------------------------------
def read_package(path: str | Path) -> DemucsPackage:
    """Read a demucs `.th` package: its class, constructor arguments, float32 state, extras.

    A DiffQ-quantized state is decoded onto a freshly built model (see the DiffQ section).
    """
    path = Path(path)
    pkg = safe_load(path)
    if not isinstance(pkg, Mapping) or not {"klass", "kwargs", "state"} <= set(pkg):
        raise CheckpointError(f"{path}: not a demucs package (expected klass, kwargs and state)")
    klass = _KLASS_REFS.get(pkg["klass"]) if isinstance(pkg["klass"], type) else None
    if klass is None:
        raise CheckpointError(f"{path}: `klass` is not one of the demucs model classes")
    args, kwargs = pkg.get("args") or (), pkg["kwargs"]
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{path}: `args`/`kwargs` are not a list and a mapping")
    extras = {k: v for k, v in pkg.items() if k not in ("klass", "args", "kwargs", "state")}
    state = pkg["state"]
    if isinstance(state, Mapping) and state.get("__quantized"):
        state = _dequantize(path, klass, tuple(args), dict(kwargs), state)
    return DemucsPackage(path, klass, tuple(args), dict(kwargs), _float_state(state, path), extras)


def _build(path: Path, model: Mapping[str, Any]) -> nn.Module:
    try:
        return demucs_nn.build(model)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _dequantize(path: Path, klass: str, args: tuple, kwargs: dict, state: Mapping) -> dict:
    """The float weights of a DiffQ/Uniform quantized state, decoded onto a fresh model."""
    meta = state.get("meta")
    kind = _QUANTIZER_REFS.get(meta.get("klass")) if isinstance(meta, Mapping) else None
    if kind is None:
        raise CheckpointError(f"{path}: quantized state without a known diffq quantizer class")
    model = _build(path, {"klass": klass, "kwargs": kwargs, "args": args})
    try:
        _restore_quantized(model, state, kind)
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path}: cannot decode the quantized (DiffQ) state ({_first(e)})"
        ) from None
    return model.state_dict()


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: Path) -> nn.Module:
    """module.load_state_dict(state, strict=True), a mismatch as a one-line CheckpointError."""
    missing, unexpected = _diff_keys(module, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the weights do not fit the model ({len(missing)} missing, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the model ({_first(e)})") from None
    return module.eval()


def _diff_keys(module: nn.Module, state: Mapping[str, Tensor]) -> tuple[list, list]:
    expected = set(module.state_dict())
    if isinstance(module, demucs_nn.Demucs):  # it also accepts pre-v3 key names
        state = rename_pre_v3(state, module.depth)
    return sorted(expected - set(state)), sorted(set(state) - expected)


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1].strip() if text else type(e).__name__


def load_package(path: str | Path) -> nn.Module:
    """Build the package's model (engine attributes set) and load its weights strictly."""
    pkg = read_package(path)
    model = {"klass": pkg.klass, "kwargs": pkg.kwargs}
    if pkg.args:
        model["args"] = list(pkg.args)
    return load_strict(_build(pkg.path, model), pkg.state, pkg.path)


# --- bags of models -----------------------------------------------------------------------------
@dataclass
class BagSpec:
    """A bag YAML: member package files (in the YAML's order), weights and segment override."""

    path: Path
    members: list[Path]
    weights: list[list[float]] | None
    segment: Any


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such bag file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid YAML file ({_first(e)})") from None


def local_repo(folder: str | Path) -> dict[str, tuple[Path, str | None]]:
    """signature -> (file, sha256 prefix or None) for every `*.th` in `folder`.

    demucs's LocalRepo rule: a stem with `-` is split at its last `-` into signature and
    checksum; a stem without one is a signature with nothing to check."""
    folder = Path(folder)
    found: dict[str, tuple[Path, str | None]] = {}
    for file in sorted(folder.glob("*.th")):
        sig, _, checksum = file.stem.rpartition("-") if "-" in file.stem else (file.stem, "", "")
        if sig in found:
            raise CheckpointError(
                f"{folder}: two packages for signature {sig!r} "
                f"({found[sig][0].name}, {file.name}); keep one"
            )
        found[sig] = (file, checksum or None)
    return found


def verify_checksum(path: Path, checksum: str) -> None:
    """The file's sha256 must start with `checksum` (the hex after the name's last `-`)."""
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    actual = sha.hexdigest()[: len(checksum)]
    if actual != checksum.lower():
        raise CheckpointError(
            f"{path}: checksum mismatch: the name says {checksum}, the "
            f"file's sha256 starts with {actual}; the file is damaged or altered"
        )


def read_bag(path: str | Path, folder: str | Path | None = None) -> BagSpec:
    """Read `<name>.yaml` (models: [signatures], weights: [[...]], segment: seconds) and find
    each member in `folder` (default: the YAML's folder), checking its sha256 prefix."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise ConfigError(f"{path}: a bag YAML needs `models:`, a list of signatures")
    extra = set(data) - {"models", "weights", "segment"}
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {sorted(extra)} (models, weights, segment)")
    repo = local_repo(folder if folder is not None else path.parent)
    members = []
    for sig in data["models"]:
        if str(sig) not in repo:
            raise CheckpointError(
                f"{path}: no package for signature {sig!r} in "
                f"{folder if folder is not None else path.parent}"
            )
        file, checksum = repo[str(sig)]
        if checksum is not None:
            verify_checksum(file, checksum)
        members.append(file)
    segment = data.get("segment")
    if segment is not None:
        segment = demucs_nn.parse_segment(segment, f"{path}: segment")
    return BagSpec(path, members, data.get("weights"), segment)


def load_bag(path: str | Path, folder: str | Path | None = None) -> nn.Module:
    """A `DemucsBag` (members strictly loaded, engine attributes set) from a bag YAML."""
    spec = read_bag(path, folder)
    packages = [read_package(file) for file in spec.members]
    model = {
        "models": [{"klass": p.klass, "kwargs": p.kwargs, "args": list(p.args)} for p in packages],
        "weights": spec.weights,
        "segment": spec.segment,
    }
    bag = _build(spec.path, model)
    for member, pkg in zip(bag.models, packages):
        load_strict(member, pkg.state, pkg.path)
    return bag.eval()


# --- MSST-trained HTDemucs ------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The float32 state dict of an MSST checkpoint: a plain state dict, or one under `state`
    (an official demucs package, which MSST loads directly), `state_dict` or
    `model_state_dict` (next to optimiser state); a DDP `module.` prefix is removed."""
    path = Path(path)
    obj = safe_load(path)
    for _ in range(2):  # wrappers can nest once ({"state": {"state_dict": ...}})
        if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
            obj = inner if inner is not None else obj
    if isinstance(obj, Mapping) and obj.get("__quantized"):
        raise CheckpointError(
            f"{path}: a quantized (DiffQ) state needs its demucs package; load it with read_package"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: no state dict found (expected a mapping of tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return _float_state(tensors, path)


def load_msst(config: Mapping[str, Any], checkpoint: str | Path) -> nn.Module:
    """An MSST-trained Demucs (usually HTDemucs) from its parsed YAML and checkpoint.

    The kwargs come from `nn.demucs.from_msst` (MSST's `use_train_segment=False` default)."""
    path = Path(checkpoint)
    card = demucs_nn.from_msst(config)
    module = demucs_nn.MSST_FAMILY.build(
        card["model"],
        sample_rate=card["sample_rate"],
        stems=card["stems"],
        chunk_size=card["chunk_size"],
    )
    return load_strict(module, read_state_dict(path), path)


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


def _restore_quantized(model: nn.Module, state: Mapping[str, Any], kind: str) -> None:
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
