"""The family registry: card `architecture` -> `Family` (builder, checkpoint format, MSST reader).

Adding a model family is one module in `separator/nn/` that defines a `Family`, plus one line in
`_BUILTIN` below. Code outside the package (or a test) can add one at run time with `register`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import separator.nn.apollo as apollo
import separator.nn.bandit as bandit
import separator.nn.bandit_v2 as bandit_v2
import separator.nn.bs_roformer as bs_roformer
import separator.nn.conformer as conformer
import separator.nn.demucs as demucs
import separator.nn.experimental as experimental
import separator.nn.mdx23c as mdx23c
import separator.nn.mel_roformer as mel_roformer
import separator.nn.scnet as scnet
from separator.errors import ConfigError
from separator.nn.family import Family

_BUILTIN: tuple[Family, ...] = (
    bs_roformer.FAMILY,
    mel_roformer.FAMILY,
    experimental.BS_FAMILY,
    experimental.MEL_FAMILY,
    conformer.BS_FAMILY,
    conformer.MEL_FAMILY,
    scnet.SCNET,
    scnet.SCNET_MASKED,
    scnet.SCNET_TRAN,
    mdx23c.FAMILY,
    apollo.FAMILY,
    bandit.FAMILY,
    bandit_v2.FAMILY,
    *demucs.FAMILIES,
)

FAMILIES: dict[str, Family] = {f.name: f for f in _BUILTIN}


def register(family: Family, *, replace: bool = False) -> Family:
    """Add a family (e.g. from a plugin or a test); a taken name is an error unless `replace`."""
    if family.name in FAMILIES and not replace:
        raise ConfigError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family added with `register` (built-in families stay)."""
    if any(f.name == name for f in _BUILTIN):
        raise ConfigError(f"model family {name!r} is built in and cannot be removed")
    FAMILIES.pop(name, None)


def get_family(name: str) -> Family:
    """The family called `name`; an unknown name is a ConfigError that lists the known ones."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown architecture {name!r} (known: {', '.join(sorted(FAMILIES))})"
        ) from None


def msst_model_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model's arguments in an MSST YAML: its `model:` section, or `kwargs:` where MSST keeps
    them for `bandit_v2` (whose YAMLs name a `cls:` instead); {} if it has neither."""
    if isinstance(config.get("model"), str):  # demucs's YAMLs: `model: htdemucs` names a section,
        return config  # and the demucs families' msst_match reads the whole YAML
    for key in ("model", "kwargs"):
        if isinstance(config.get(key), Mapping):
            return config[key]
    return {}


def infer_msst_family(model: Mapping[str, Any]) -> Family:
    """The family whose MSST `model:` sections this one looks most like (`Family.msst_match`).

    MSST YAMLs carry no model type (MSST takes it on its command line); where no single family
    matches best, the error lists the types to choose from.
    """
    scores = {f.name: f.msst_match(model) for f in FAMILIES.values() if f.msst_match is not None}
    best = max(scores.values(), default=0)
    found = [name for name, score in scores.items() if score == best and score > 0]
    if len(found) == 1:
        return FAMILIES[found[0]]
    which = f"it could be {' or '.join(sorted(found))}" if found else "it matches no family"
    raise ConfigError(
        f"cannot tell the model type from the config's keys ({which}); give it as "
        f"--model-type / model_type=, one of: {', '.join(sorted(scores))}"
    )
