"""`load_separator`: a `Separator` or an `Ensemble` from a name, a path or "a,b[,c]"."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from separator.errors import SeparatorError
from separator.inference.ensemble import Ensemble
from separator.inference.separator import Separator, SeparatorBase
from separator.zoo import DEFAULT_MODEL, EnsembleCard, find_card, load_model


def load_separator(
    model: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    *,
    method: str | None = None,
    weights: Sequence[float] | None = None,
    offline: bool | None = None,
    model_type: str | None = None,
    **kwargs,
) -> SeparatorBase:
    """A `Separator`, or an `Ensemble` for "a,b[,c]" or an ensemble card name.

    No model and no config: the embedded default model. `method`/`weights` choose how an ensemble
    combines its members (avg by default; an ensemble card's own choice otherwise); `kwargs` go to
    every `Separator`. `config` is the MSST YAML of a checkpoint given as `model` (either order
    works), `model_type` its MSST model type where the keys do not tell.
    """
    if model is None and config is None:
        model = DEFAULT_MODEL
    elif model is None:  # a config alone names the model (a card, or an MSST YAML)
        model, config = config, None
    spec = str(model)
    names = [m.strip() for m in spec.split(",") if m.strip()] if "," in spec else None
    stem_models = None
    card = None if names or Path(spec).exists() else find_card(spec)
    if isinstance(card, EnsembleCard):
        names = list(card.models)
        method = method or card.method
        weights = weights if weights is not None else card.weights
        stem_models = {s: [names.index(m) for m in ms] for s, ms in card.stem_models.items()}
    if names is None:
        if method is not None or weights is not None:
            raise SeparatorError("`method` and `weights` need several models: `model='a,b'`")
        single = load_model(spec, config, model_type=model_type, offline=offline)
        return Separator(single, **kwargs)
    if config is not None or model_type is not None:
        raise SeparatorError("`config` applies to one checkpoint, not to an ensemble")
    members = [Separator(load_model(n, offline=offline), **kwargs) for n in names]
    return Ensemble(
        members, method=method or "avg", weights=weights, stem_models=stem_models, names=names
    )
