"""`load_separator`: a `Separator`, an `Ensemble` or a `Chain` from a name, a path, "a,b[,c]" or
"a:vocals > b:noreverb > c"."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from separator.errors import SeparatorError
from separator.inference.chain import Chain
from separator.inference.ensemble import Ensemble
from separator.inference.separator import Separator, SeparatorBase
from separator.zoo import DEFAULT_MODEL, ChainCard, EnsembleCard, find_card, load_model
from separator.zoo.cards import parse_chain
from separator.zoo.defaults import DefaultChoice, choose_default, embedded


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
    """A `Separator`, an `Ensemble` for "a,b[,c]" or an ensemble card name, or a `Chain` for
    "a:vocals > b:noreverb > c" or a chain card name.

    No model and no config: the default model (`load_default_separator`; a warning says when the
    embedded model runs in its place). `method`/`weights` choose how an ensemble
    combines its members (avg by default; an ensemble card's own choice otherwise); `kwargs` go to
    every `Separator`. `config` is the MSST YAML of a checkpoint given as `model` (either order
    works), `model_type` its MSST model type where the keys do not tell.
    """
    if model is None and config is None:
        sep, choice = load_default_separator(
            method=method, weights=weights, offline=offline, **kwargs
        )
        if choice.fallback:
            warnings.warn(choice.reason, stacklevel=2)
        return sep
    if model is None:  # a config alone names the model (a card, or an MSST YAML)
        model, config = config, None
    spec = str(model)
    card = None if "," in spec or ">" in spec or Path(spec).exists() else find_card(spec)
    if ">" in spec or isinstance(card, ChainCard):  # "a:vocals > b:noreverb > c", a chain card
        if config is not None or model_type is not None or method or weights is not None:
            raise SeparatorError("a chain takes no `config`, `method` or `weights` of its own")
        return load_chain(card.steps if card else parse_chain(spec), offline=offline, **kwargs)
    names = [m.strip() for m in spec.split(",") if m.strip()] if "," in spec else None
    stem_models = None
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


def load_chain(
    steps: Sequence[tuple[str, str | None]], *, offline: bool | None = None, **kwargs
) -> Chain:
    """A `Chain` of (model, stem taken from its output) steps; each model as `load_separator`
    loads it (a name, a card, `a,b` for an ensemble)."""
    return Chain(
        [load_separator(m, offline=offline, **kwargs) for m, _ in steps],
        [stem for _, stem in steps[:-1]],
        names=[m for m, _ in steps],
    )


def load_default_separator(
    *, offline: bool | None = None, **kwargs
) -> tuple[SeparatorBase, DefaultChoice]:
    """The model `separate` runs without `--model` (`separator.zoo.defaults`), and the choice
    with its one-line reason. If the chosen model cannot be downloaded, the embedded model runs
    instead (an override by SEPARATOR_DEFAULT_MODEL or the config file is never replaced)."""
    choice = choose_default(offline=offline)
    try:
        return load_separator(choice.name, offline=offline, **kwargs), choice
    except SeparatorError as e:
        if choice.fallback or choice.configured:
            raise
        reason = str(e).splitlines()[0]
        choice = embedded(f"the default {choice.name} could not be downloaded ({reason})")
        return load_separator(DEFAULT_MODEL, offline=offline, **kwargs), choice
