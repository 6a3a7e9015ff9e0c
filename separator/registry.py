"""Model names: the cards shipped in `models/` (community checkpoints, ensembles) and `pretrained/`
(the embedded default), and where each one's weights are on this machine.

A card's weights are either a file next to the card (`weights.file`, the embedded default) or a
URL fetched into the cache by `separator.zoo.fetch` (sha256-checked, resumable, offline-aware).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir

from separator.cards import ModelCard, check_name
from separator.errors import ConfigError, SeparatorError
from separator.resources import models_dir, pretrained_dir

DEFAULT_MODEL = "separator_default"  # the card in pretrained/ that `separate` uses without --model
ENSEMBLE_METHODS = ("avg", "median", "max_spec", "min_spec")


@dataclass(frozen=True)
class EnsembleCard:
    """A fixed combination of models: `ensemble: {method, models, weights, stems}`.

    `stems` (optional) maps a stem to the models it is taken from; a stem not listed there comes
    from every member that has it.
    """

    name: str
    models: tuple[str, ...]
    method: str = "avg"
    weights: tuple[float, ...] | None = None
    stem_models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    license: str = "see the member models"
    source: str = ""
    sdr: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        where = f"ensemble {self.name}"
        check_ensemble(self.models, self.weights, self.method, where)
        for stem, members in self.stem_models.items():
            check_name(stem)
            unknown = [m for m in members if m not in self.models]
            if unknown or not members:
                raise ConfigError(f"{where}: stem {stem} names models {unknown} not in `models`")

    @classmethod
    def from_dict(cls, values: dict[str, Any], path: Path | None = None) -> EnsembleCard:
        where = f"{path}: " if path else ""
        values = dict(values)
        spec = values.pop("ensemble")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}`ensemble:` must be a mapping (method, models, weights)")
        extra = sorted(set(spec) - {"method", "models", "weights", "stems"})
        unknown = sorted(set(values) - {"name", "license", "source", "sdr", "notes"})
        if extra or unknown:
            raise ConfigError(f"{where}unknown ensemble card key(s): {', '.join(extra + unknown)}")
        if "name" not in values or "models" not in spec:
            raise ConfigError(f"{where}an ensemble card needs `name` and `ensemble.models`")
        weights = spec.get("weights")
        try:
            return cls(
                models=tuple(str(m) for m in spec["models"]),
                method=str(spec.get("method", "avg")),
                weights=tuple(float(w) for w in weights) if weights is not None else None,
                stem_models={str(k): tuple(v) for k, v in (spec.get("stems") or {}).items()},
                path=path,
                **values,
            )
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None


Card = ModelCard | EnsembleCard


def check_ensemble(
    models: tuple[str, ...] | list[str], weights: Any, method: str, where: str
) -> None:
    """Validate an ensemble's members, weights and method."""
    if len(models) < 2:
        raise ConfigError(f"{where}: an ensemble needs at least two models, got {list(models)}")
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(
            f"{where}: unknown ensemble method {method!r}; use {', '.join(ENSEMBLE_METHODS)}"
        )
    if weights is not None:
        if len(weights) != len(models):
            raise ConfigError(
                f"{where}: {len(weights)} weights for {len(models)} models; give one per model"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"{where}: weights must be >= 0 with a positive sum, got {weights}")


def read_any_card(path: Path) -> Card:
    """A model card or an ensemble card from a YAML file."""
    from separator.checkpoints import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a model card (a YAML mapping)")
    if "ensemble" in data:
        return EnsembleCard.from_dict(data, path)
    if "architecture" not in data:
        raise ConfigError(f"{path}: not a model card (no `architecture:` or `ensemble:`)")
    return ModelCard.from_dict(data, path)


def user_models_dir() -> Path:
    """Where `separator models import` writes: `$SEPARATOR_MODELS`, else the user data dir."""
    env = os.environ.get("SEPARATOR_MODELS")
    return Path(env) if env else Path(user_data_dir("separator")) / "models"


def card_files() -> list[Path]:
    """Every known card: pretrained/ first, then models/, then the user's imported models."""
    files = []
    for folder in (pretrained_dir(), models_dir(), user_models_dir()):
        if folder.is_dir():
            files += sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("."))
    return files


_CACHE: dict[tuple, dict[str, Card]] = {}


def all_cards() -> dict[str, Card]:
    """{name: card} of every known card; two cards with one name are an error.

    Parsed once per state of the card files (paths, sizes, mtimes): loading a model by name looks
    the cards up more than once, and an import or edit is still seen at once.
    """
    files = card_files()
    key = tuple((str(p), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _read_cards(files)
    return dict(_CACHE[key])


def _read_cards(files: list[Path]) -> dict[str, Card]:
    cards: dict[str, Card] = {}
    for path in files:
        card = read_any_card(path)
        if card.name in cards:
            raise ConfigError(
                f"{path}: model name {card.name!r} is also used by {cards[card.name].path}"
            )
        cards[card.name] = card
    return cards


def find_card(name: str) -> Card | None:
    """The shipped card called `name`, or None."""
    return all_cards().get(name)


def cached_path(card: ModelCard) -> Path | None:
    """Where the card's weights are (or will be) on this machine; None if it names none."""
    local = card.weights_path
    if local is not None:
        return local
    url = card.weights.get("url")
    if not url:
        return None
    from separator.zoo import cache_dir, url_file_name

    return cache_dir() / card.name / url_file_name(url)


def is_cached(card: ModelCard) -> bool:
    path = cached_path(card)
    return path is not None and path.is_file()


def weights_file(card: ModelCard, *, offline: bool | None = None, progress: bool = True) -> Path:
    """The card's weights as a verified local file, downloading them if needed."""
    local = card.weights_path
    if local is not None:
        if not local.is_file():
            raise SeparatorError(f"model {card.name}: weights file {local} is missing")
        sha = card.weights.get("sha256")
        if sha:
            from separator.zoo import verify

            if not verify(local, sha):
                raise SeparatorError(
                    f"model {card.name}: {local} does not match the card's sha256 {sha} "
                    "(corrupt or replaced); reinstall separator"
                )
        return local
    url = card.weights.get("url")
    if not url:
        raise SeparatorError(f"model {card.name}: the card names no weights file or URL")
    from separator.zoo import fetch

    return fetch(
        url, card.weights.get("sha256"), dest=cached_path(card), offline=offline, progress=progress
    )
