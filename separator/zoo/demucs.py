"""The "demucs" checkpoint format: `.th` packages, bag YAMLs and HTDemucs state dicts, read safely.

A demucs package is a `torch.save` dict {klass, args, kwargs, state, training_args, metrics}
whose `klass` is a pickled reference to the model class (and whose HTDemucs `segment` is a
`fractions.Fraction`). It is read with `torch.load(weights_only=True)` (`formats.torch_load`)
and an allow-list that maps the three demucs class names (and, for DiffQ packages, the two
quantizer class names) to inert stand-ins defined here, plus `fractions.Fraction`. Nothing in a
checkpoint is imported or executed: any other global is refused by torch's weights-only
unpickler.

Bags (`<name>.yaml`: models, weights, segment) find their members in a folder by signature,
with demucs's `LocalRepo` rule: a file `<sig>-<hex>.th` is split at its last `-`, and the hex
must prefix the file's sha256.

The loader's routes (`zoo.loader`): a `.th` alone (`card_from_package`), a bag YAML
(`card_from_bag`), and cards whose family reads this format (`load_demucs_card`). Errors are
`CheckpointError` (or `ConfigError` for bad configs), one line naming the file.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from separator.errors import CheckpointError, ConfigError
from separator.names import safe_name
from separator.nn import demucs as demucs_nn
from separator.nn import get_family
from separator.nn.demucs.demucs_v2 import rename_pre_v3
from separator.zoo.cards import ModelCard
from separator.zoo.diffq import restore_quantized
from separator.zoo.formats import READERS, torch_load


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
ALLOWED = [
    (_HTDemucsRef, "demucs.htdemucs.HTDemucs"),
    (_HDemucsRef, "demucs.hdemucs.HDemucs"),
    (_DemucsRef, "demucs.demucs.Demucs"),
    (_DiffQuantizerRef, "diffq.diffq.DiffQuantizer"),
    (_UniformQuantizerRef, "diffq.uniform.UniformQuantizer"),
    Fraction,
]
_STATE_KEYS = ("state", "state_dict", "model_state_dict")
_CHECKSUM = re.compile(r"[0-9a-fA-F]{1,64}")


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
        """The card `model:` mapping {klass, kwargs} (and `args` if any) for this package."""
        out = {"klass": self.klass, "kwargs": dict(self.kwargs)}
        return dict(out, args=list(self.args)) if self.args else out


# --- the safe unpickler -------------------------------------------------------------------------
def safe_load(path: str | Path) -> Any:
    """torch.load(weights_only=True) with the demucs stand-ins allowed; refusals are one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return torch_load(path, ALLOWED)


def _is_package(obj: Any) -> bool:
    return isinstance(obj, Mapping) and {"klass", "kwargs", "state"} <= set(obj)


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
def read_package(path: str | Path, obj: Any = None) -> DemucsPackage:
    """Read a demucs `.th` package: its class, constructor arguments, float32 state, extras.

    A DiffQ-quantized state is decoded onto a freshly built model (`zoo.diffq`); pre-v3 key
    names of time-domain Demucs states are renamed. `obj`: the file's already unpickled content.
    """
    path = Path(path)
    pkg = safe_load(path) if obj is None else obj
    if not _is_package(pkg):
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
    state = _float_state(state, path)
    if klass == "demucs":
        state = rename_pre_v3(state, int(kwargs.get("depth", 6)))
    return DemucsPackage(path, klass, tuple(args), dict(kwargs), state, extras)


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
        restore_quantized(model, state, kind)
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
    return load_strict(_build(pkg.path, pkg.model), pkg.state, pkg.path)


# --- bags of models -----------------------------------------------------------------------------
@dataclass
class BagSpec:
    """A bag YAML: member package files (in the YAML's order), weights and segment override."""

    path: Path
    members: list[Path]
    weights: list[list[float]] | None
    segment: Any
    checksums: list[str | None] = field(default_factory=list)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such bag file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid YAML file ({_first(e)})") from None


def is_bag(data: Any) -> bool:
    """A demucs bag YAML: `models:` (a list of signatures) plus optional weights/segment."""
    return (
        isinstance(data, Mapping)
        and isinstance(data.get("models"), list)
        and set(data) <= {"models", "weights", "segment"}
    )


def name_checksum(file: Path) -> str | None:
    """The sha256 prefix a demucs file name carries: the hex after the stem's last `-`."""
    sig, _, tail = file.stem.rpartition("-")
    return tail.lower() if sig and _CHECKSUM.fullmatch(tail) else None


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


def read_bag(path: str | Path, folder: str | Path | None = None, *, verify: bool = True) -> BagSpec:
    """Read `<name>.yaml` (models: [signatures], weights: [[...]], segment: seconds) and find
    each member in `folder` (default: the YAML's folder), checking its sha256 prefix."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise ConfigError(f"{path}: a bag YAML needs `models:`, a list of signatures")
    extra = set(data) - {"models", "weights", "segment"}
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {sorted(extra)} (models, weights, segment)")
    where = folder if folder is not None else path.parent
    repo = local_repo(where)
    members, checksums = [], []
    for sig in data["models"]:
        if str(sig) not in repo:
            raise CheckpointError(f"{path}: no package for signature {sig!r} in {where}")
        file, checksum = repo[str(sig)]
        if checksum is not None and verify:
            verify_checksum(file, checksum)
        members.append(file)
        checksums.append(checksum)
    segment = data.get("segment")
    if segment is not None:
        segment = demucs_nn.parse_segment(segment, f"{path}: segment")
    return BagSpec(path, members, data.get("weights"), segment, checksums)


def load_bag(path: str | Path, folder: str | Path | None = None) -> nn.Module:
    """A `DemucsBag` (members strictly loaded, engine attributes set) from a bag YAML."""
    spec = read_bag(path, folder)
    packages = [read_package(file) for file in spec.members]
    model = {"models": [p.model for p in packages], "weights": spec.weights}
    bag = _build(spec.path, dict(model, segment=spec.segment))
    for member, pkg in zip(bag.models, packages):
        load_strict(member, pkg.state, pkg.path)
    return bag.eval()


# --- MSST-trained HTDemucs ------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The float32 state dict of a checkpoint: a plain state dict, or one under `state` (an
    official demucs package, which MSST loads directly; DiffQ states decoded), `state_dict` or
    `model_state_dict` (next to optimiser state); a DDP `module.` prefix is removed."""
    path = Path(path)
    obj = safe_load(path)
    if _is_package(obj) and isinstance(obj["klass"], type):
        return read_package(path, obj).state
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


# --- cards ----------------------------------------------------------------------------------
def _card(name: str, model: Mapping[str, Any], weights: dict, source: str) -> ModelCard:
    with torch.device("meta"):  # for the stems and training length; no weights are made
        module = demucs_nn.build(model)
    return ModelCard(
        name=safe_name(name),
        architecture=demucs_nn.FAMILY.name,
        model=dict(model),
        stems=tuple(module.stems),
        sample_rate=module.sample_rate,
        chunk_size=module.chunk_size,
        weights=weights,
        source=source,
    )


def _file_entry(file: Path, checksum: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": str(file.resolve())}
    return dict(entry, sha256_prefix=checksum) if checksum else entry


def card_from_package(path: str | Path) -> ModelCard:
    """The card of a `.th` package given alone: its own class and kwargs, the demucs pipeline,
    and the sha256 prefix its name carries (`<sig>-<hex>.th`), checked when it is loaded."""
    path = Path(path)
    pkg = read_package(path)
    where = f"{path}: "
    try:
        return _card(path.stem, pkg.model, _file_entry(path, name_checksum(path)), path.name)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def card_from_bag(path: str | Path) -> ModelCard:
    """The card of a demucs bag YAML, its members found beside it (prefixes checked at load)."""
    spec = read_bag(path, verify=False)
    models = [read_package(file).model for file in spec.members]
    model = {"models": models, "weights": spec.weights, "segment": spec.segment}
    files = [_file_entry(f, c) for f, c in zip(spec.members, spec.checksums)]
    try:
        return _card(spec.path.stem, model, {"files": files}, spec.path.name)
    except ConfigError as e:
        raise ConfigError(f"{spec.path}: {e}") from None


def load_demucs_card(card: ModelCard, files: Sequence[Path]) -> nn.Module:
    """The module of a card whose family reads "demucs" weights, one file per member.

    For `architecture: demucs` a member file that is a package builds its member from the
    package's own class and kwargs, as demucs does (a card value that differs is named in a
    warning); MSST-style cards (`htdemucs`) build from the card, as MSST does. Plain state dicts
    always take the card's member. Returns the module in eval mode with the engine attributes.
    """
    spec = dict(card.model)
    members = list(spec["models"]) if "models" in spec else [spec]
    if len(files) != len(members):
        raise ConfigError(f"{card.where}: {len(files)} weights files for {len(members)} models")
    states = []
    for k, file in enumerate(files):
        obj = safe_load(file)
        if _is_package(obj) and isinstance(obj["klass"], type):
            pkg = read_package(file, obj)
            if card.architecture == demucs_nn.FAMILY.name:
                members[k] = _package_member(card, members[k], pkg)
            states.append(pkg.state)
        else:
            states.append(read_state_dict(file))
    model = dict(spec, models=members) if "models" in spec else members[0]
    try:
        build = get_family(card.architecture).build
        module = build(model, sample_rate=card.sample_rate, stems=card.stems)
    except ConfigError as e:
        raise ConfigError(f"{card.where}: {e}") from None
    targets = list(module.models) if "models" in spec else [module]
    for target, state, file in zip(targets, states, files):
        load_strict(target, state, file)
    return module.eval()


def _package_member(card: ModelCard, member: Mapping, pkg: DemucsPackage) -> dict:
    """The package's own member; its class must be the card's, other differences are named."""
    if member.get("klass") != pkg.klass:
        raise CheckpointError(
            f"{pkg.path}: holds a {pkg.klass} model, the card {card.where} says "
            f"{member.get('klass')}"
        )
    ours, theirs = (
        _arguments(pkg.klass, member.get("kwargs") or {}),
        _arguments(pkg.klass, pkg.kwargs),
    )
    differ = sorted(k for k, v in theirs.items() if k in ours and not _same(ours[k], v))
    if differ:
        warnings.warn(
            f"{pkg.path.name}: the package's {', '.join(differ)} differ from the card "
            f"{card.where}; using the package's, as demucs does",
            stacklevel=3,
        )
    return pkg.model


def _arguments(klass: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every constructor argument of `klass` with `kwargs` over the defaults (unknown dropped)."""
    params = inspect.signature(demucs_nn.KLASSES[klass]).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    out.update((k, v) for k, v in kwargs.items() if k in params)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return a == b or demucs_nn.parse_segment(a) == demucs_nn.parse_segment(b)
    except (ConfigError, TypeError):
        return False


# The state dict of any demucs-format file (what `formats.read_weights` hands out); registered
# here because formats cannot import this module (it imports formats).
READERS["demucs"] = read_state_dict
