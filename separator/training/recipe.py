"""Training recipes: one YAML file per recipe, loaded into frozen dataclasses.

`key=value` overrides address the YAML with dotted paths (`data.root=/data/musdb18hq`,
`training.lr=3e-4`, `output_dir=runs/x`); values are parsed as YAML scalars. The resolved recipe
is saved with every run and every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from separator.datasets import MUSDB_STEMS
from separator.errors import ConfigError
from separator.files import plain, read_yaml
from separator.training.data import Augment


@dataclass(frozen=True)
class ModelSection:
    architecture: str = "bs_roformer"  # a family in separator.nn.FAMILIES
    args: dict[str, Any] = field(default_factory=dict)  # an MSST `model:` section


@dataclass(frozen=True)
class AudioSection:
    sample_rate: int = 44100
    chunk_size: int = 264600  # samples per training excerpt (6 s)


@dataclass(frozen=True)
class DataSection:
    root: str = "data/musdb18hq"  # MUSDB18HQ layout: {train,test}/<track>/<stem>.wav
    stems: tuple[str, ...] = MUSDB_STEMS  # stems mixed together
    target: str | None = None  # train a one-stem model of this stem (e.g. vocals)
    subset: str = "train"
    split: str | None = "train"  # musdb's train split: train minus the 14 validation tracks
    min_mean_abs: float = 0.0  # skip near-silent excerpts (MSST's audio.min_mean_abs)
    num_workers: int = 0
    augment: Augment = field(default_factory=Augment)


@dataclass(frozen=True)
class TrainingSection:
    steps: int = 100000  # optimizer steps
    batch_size: int = 2  # per process
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 5.0  # max gradient norm; 0 disables
    warmup_steps: int = 1000
    schedule: str = "cosine"  # cosine | plateau | constant
    min_lr_ratio: float = 0.01  # cosine ends at lr · min_lr_ratio
    plateau_patience: int = 2  # validations without improvement before the lr is reduced
    plateau_factor: float = 0.95
    ema_decay: float = 0.999  # 0 disables the EMA
    amp: str = "none"  # none | bf16 | fp16 (autocast on GPU; the STFT stays in float32)
    compile: bool = False
    grad_checkpoint: bool = False
    max_bad_steps: int = 10  # stop after this many non-finite losses in a row
    checkpoint_every: int = 1000
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise ConfigError(
                f"training.schedule must be cosine, plateau or constant, got {self.schedule!r}"
            )
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"training.amp must be none, bf16 or fp16, got {self.amp!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1")


@dataclass(frozen=True)
class ValidationSection:
    every: int = 5000  # steps between validations (and at the end)
    subset: str = "train"
    split: str | None = "valid"  # musdb's 14 validation tracks
    max_tracks: int | None = None
    max_seconds: float | None = None  # crop validation tracks (quick checks)
    overlap: float = 2.0  # engine evaluations per sample
    batch_size: int = 1


@dataclass(frozen=True)
class LossSection:
    """The objective (`separator.training.losses`): term weights and settings. Unset (null) STFT
    settings come from the model's config where its family's MSST config defines them (the
    RoFormers' multi_stft_* and stft_n_fft), else the defaults in `losses`; so without a `loss:`
    section a RoFormer trains on L1 + its multi-resolution STFT term, as MSST's does."""

    l1: float = 1.0  # mean |est - ref| on the waveform
    mse: float = 0.0  # mean (est - ref)^2
    masked_mse: float = 0.0  # MSST's masked_loss (its default for MDX23C, SCNet, ...)
    q: float = 0.95  # masked_mse: quantile above which errors are dropped (MSST training.q)
    coarse: bool = True  # masked_mse: one error per stem and example (training.coarse_loss_clip)
    multi_stft: float | None = None  # weight of the multi-resolution STFT L1 term
    stft_windows: tuple[int, ...] | None = None
    stft_hop: int | None = None
    stft_n_fft: int | None = None  # n_fft = max(window, stft_n_fft)
    stft_normalized: bool | None = None


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    seed: int = 0
    output_dir: str = "runs/recipe"
    model: ModelSection = field(default_factory=ModelSection)
    audio: AudioSection = field(default_factory=AudioSection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    loss: LossSection = field(default_factory=LossSection)
    license: str = "see the training data's licences"

    @property
    def model_stems(self) -> tuple[str, ...]:
        """The stems the model outputs: the target alone, or every mixed stem."""
        return (self.data.target,) if self.data.target else tuple(self.data.stems)

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Construct dataclass `cls` from a mapping, recursing into nested dataclasses."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where or 'recipe'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown recipe key {where}{key} (known: {', '.join(fields)})")
        sub = _nested_type(fields[key])
        if sub is not None:
            value = _build(sub, value or {}, f"{where}{key}.")
        else:
            value = _coerce(value, hints[key], f"{where}{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad recipe section {where or 'top level'}: {e}") from None


_NESTED = {
    "model": ModelSection,
    "audio": AudioSection,
    "data": DataSection,
    "training": TrainingSection,
    "validation": ValidationSection,
    "loss": LossSection,
    "augment": Augment,
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert YAML scalars to the field's type: `3e-4` (a string to YAML 1.1) becomes a float."""
    if isinstance(value, list):
        value = tuple(value)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if value is None or target in (Any, str) or typing.get_origin(target) in (dict, tuple):
        if isinstance(value, tuple) and typing.get_origin(target) is tuple:
            inner = typing.get_args(target)[0]
            return tuple(_coerce(v, inner, where) for v in value)
        return value
    try:
        if target is bool and isinstance(value, str):
            raise ValueError
        return target(value) if target in (int, float, bool) else value
    except (TypeError, ValueError):
        raise ConfigError(
            f"recipe key {where}: {value!r} is not a valid {target.__name__}"
        ) from None


def _nested_type(f: dataclasses.Field) -> type | None:
    return _NESTED.get(f.name) if f.name != "args" else None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. data.root=/data)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML (or start from defaults when None) and apply overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    where = f"{path}: " if path else ""
    try:
        return _build(Recipe, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def recipe_from_dict(data: Mapping[str, Any]) -> Recipe:
    return _build(Recipe, data, "")
