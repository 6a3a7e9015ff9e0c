"""Model names: the cards shipped in `models/` (community checkpoints, ensembles), in `pretrained/`
(the embedded default) and in the user's models folder (`separator models import`).

In a wheel the shipped folders are installed inside the package (`separator/builtin_models`,
`separator/builtin_pretrained`); in a source checkout they are the top-level folders.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from platformdirs import user_data_dir

from separator.errors import ConfigError
from separator.files import read_yaml
from separator.zoo.cards import Card, read_any_card

DEFAULT_MODEL = "separator_default"  # the card in pretrained/ that `separate` uses by default
_PACKAGE = Path(__file__).resolve().parent.parent


def _find(installed: str, source: str) -> Path:
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / source


def models_dir() -> Path:
    """Folder of the model cards shipped with separator."""
    return _find("builtin_models", "models")


def pretrained_dir() -> Path:
    """Folder of the embedded default model (weights and card)."""
    return _find("builtin_pretrained", "pretrained")


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
        st = path.stat()
        card = _read_card_file(path, st.st_size, st.st_mtime_ns)
        if card.name in cards:
            raise ConfigError(
                f"{path}: model name {card.name!r} is also used by {cards[card.name].path}"
            )
        cards[card.name] = card
    return cards


@functools.lru_cache(maxsize=1024)
def _read_card_file(path: Path, size: int, mtime_ns: int) -> Card:
    """One card file, parsed once per (path, size, mtime): adding a card re-reads only it."""
    data = read_yaml(path)
    if not {"ensemble", "architecture", "chain"} & set(data):
        raise ConfigError(f"{path}: not a model card (no `architecture:`, `ensemble:` or `chain:`)")
    return read_any_card(data, path=path)


def find_card(name: str) -> Card | None:
    """The known card called `name`, or None."""
    return all_cards().get(name)


def checkpoint_names() -> dict[str, str]:
    """{checkpoint file name or its stem: card name}, from every card's weight URLs (mirrors
    included), so the names UVR and audio-separator users know (`model_bs_roformer_ep_317_sdr_
    12.9755.ckpt`) find their card. A name two cards share is left out as ambiguous."""
    from urllib.parse import unquote, urlsplit

    found: dict[str, set[str]] = {}
    for name, card in all_cards().items():
        for url in getattr(card, "urls", ()):
            file = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
            for key in {file, Path(file).stem}:
                found.setdefault(key, set()).add(name)
    return {key: next(iter(names)) for key, names in found.items() if len(names) == 1}
