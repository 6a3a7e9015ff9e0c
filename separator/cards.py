"""Model cards: one YAML file that says how to build a model and where its weights are.

The same format serves the embedded default model, community checkpoints and what our training
recipes export:

    name: bs_roformer_example
    architecture: bs_roformer            # a family in separator.nn.FAMILIES
    model: {dim: 384, depth: 6, ...}     # constructor arguments (an MSST `model:` section)
    stems: [vocals, other]
    sample_rate: 44100
    chunk_size: 352800                   # samples per chunk the model was trained on
    weights: {file: x.safetensors, url: https://..., sha256: ..., size: 123}
    license: MIT
    source: who trained it and where it is documented
    sdr: {benchmark: musdb18hq, vocals: 11.0}
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from separator.errors import ConfigError

# Stem and card names end up in file names: keep them to one plain path component.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_name(name: str, what: str = "stem name") -> str:
    """Return `name` if it is safe as one file-name component, else raise ConfigError."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"{what} {name!r} is not allowed: use letters, digits, '_', '-', '.' and '+' only "
            "(it becomes a file name and must not leave the output folder)"
        )
    return name


@dataclass(frozen=True)
class ModelCard:
    """A model card. `path` is where the card was read from (weights paths are relative to it)."""

    name: str
    architecture: str
    model: dict[str, Any]
    stems: tuple[str, ...]
    sample_rate: int = 44100
    chunk_size: int = 352800
    weights: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"
    source: str = ""
    sdr: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    training_data: list[str] = field(default_factory=list)  # sources and their licences
    path: Path | None = None

    def __post_init__(self) -> None:
        from separator.nn import get_family

        check_name(self.name, "model name")
        try:
            get_family(self.architecture)
        except ConfigError as e:
            raise ConfigError(f"card {self.name}: {e}") from None
        object.__setattr__(self, "stems", tuple(check_name(s) for s in self.stems))
        if len(set(self.stems)) != len(self.stems):
            raise ConfigError(f"card {self.name}: duplicate stem names {self.stems}")
        if int(self.chunk_size) < 1 or int(self.sample_rate) < 1:
            raise ConfigError(f"card {self.name}: sample_rate and chunk_size must be positive")

    @property
    def weights_path(self) -> Path | None:
        """Local weights file named by the card (relative to the card's folder), if any."""
        name = self.weights.get("file")
        if not name:
            return None
        p = Path(name)
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        out["stems"] = list(self.stems)
        out["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        return {k: v for k, v in out.items() if v not in ("", {}, [], None)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], path: Path | None = None) -> ModelCard:
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = sorted(set(values) - names)
        where = f"{path}: " if path else ""
        if unknown:
            raise ConfigError(f"{where}unknown card key(s): {', '.join(unknown)}")
        missing = [k for k in ("name", "architecture", "model", "stems") if k not in values]
        if missing:
            raise ConfigError(f"{where}card lacks required key(s): {', '.join(missing)}")
        try:
            return cls(**values, path=path)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None


def is_card(data: dict[str, Any]) -> bool:
    """A card has `architecture` and `stems`; an MSST config has `audio`/`model`/`training`."""
    return "architecture" in data and "stems" in data


def save_card(card: ModelCard, path: Path) -> None:
    """Write a card as YAML, atomically."""
    import yaml

    from separator.checkpoints import atomic_write

    text = yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write(path, text.encode())
