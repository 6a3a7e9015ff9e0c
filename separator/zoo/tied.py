"""When a raw MSST YAML's model type was inferred, let its checkpoint decide between families.

MSST YAMLs carry no model type, and some families read the very same `model:` keys: `scnet` and
`scnet_masked` take identical sections, and only the checkpoint tells them apart (the masked
variant has `pos_embed_f` and `mask_layer.*`). So when a YAML's type was inferred (not given),
every family whose MSST configs the section could be (`Family.msst_match` > 0) is built from the
YAML on the meta device, and the first whose state-dict keys and shapes equal the checkpoint's
wins, in the order of the inference (the inferred family first). If none fits, the inferred card
stays, and loading it explains the mismatch. Nothing here knows a family by name: a family that
shares keys with another plugs in through its `msst_match` and `from_msst` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.files import read_yaml
from separator.nn import FAMILIES, msst_model_section
from separator.zoo.cards import ModelCard, card_from_msst, is_card


def msst_source(model: Any, card: ModelCard) -> Mapping[str, Any] | None:
    """The parsed MSST YAML `card` was read from, or None if it came from a card or a name.

    `model` is what the caller passed to the loader (a path, a mapping, a card, a name).
    """
    if isinstance(model, ModelCard):
        return None
    if isinstance(model, Mapping):
        data = model
    elif card.path is not None and card.path.is_file():
        data = read_yaml(card.path)
    else:
        return None
    return None if is_card(data) or "ensemble" in data else data


def candidates(model_section: Mapping[str, Any]) -> list[str]:
    """Families an MSST `model:` section could be, most specific first (MSST-readable only)."""
    scores = {
        f.name: f.msst_match(model_section)
        for f in FAMILIES.values()
        if f.msst_match is not None and f.from_msst is not None
    }
    return sorted((n for n, s in scores.items() if s > 0), key=lambda n: -scores[n])


def shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def decide_by_checkpoint(
    card: ModelCard,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    build: Callable[[ModelCard], nn.Module],
) -> ModelCard:
    """The card of the family (among those `config` could be) whose keys `state` has.

    `build`: card -> module (the loader's `build_model`), run on the meta device.
    """
    names = candidates(msst_model_section(config))
    if len(names) < 2:
        return card
    names.sort(key=lambda n: n != card.architecture)  # the inferred family first (stable)
    wanted = shapes(state)
    for name in names:
        try:
            other = card if name == card.architecture else _card_as(config, card, name)
            with torch.device("meta"):
                module = build(other)
        except ConfigError:
            continue  # the YAML does not build as this family (MSST would refuse it too)
        if shapes(module.state_dict()) == wanted:
            return other
    return card


def _card_as(config: Mapping[str, Any], card: ModelCard, family: str) -> ModelCard:
    import warnings

    with warnings.catch_warnings():  # the inferred card already warned about this YAML
        warnings.simplefilter("ignore")
        return card_from_msst(config, card.path, name=card.name, model_type=family)
