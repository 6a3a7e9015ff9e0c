"""Which outputs to produce: model stems and residuals (`instrumental`, `no_<stem>`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from separator.errors import SeparatorError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class StemPlan:
    """One requested output: a model stem (`index`), the mixture minus stems (`minus`), or the
    sum of stems (`adds`: demucs' `--other-method add`)."""

    name: str
    index: int | None = None
    minus: tuple[int, ...] = ()
    adds: tuple[int, ...] = ()

    @property
    def is_residual(self) -> bool:
        return self.index is None

    @property
    def uses(self) -> tuple[int, ...]:
        """The model stems this output is made from."""
        return (self.index,) if self.index is not None else self.minus + self.adds


def available_stems(model_stems: Sequence[str], residuals: bool = True) -> list[str]:
    """Every name `--stems` accepts for a model: its stems, then the residuals (unless the model
    has none: see `Family.residuals`)."""
    names = list(model_stems)
    if not residuals:
        return names
    if "vocals" in model_stems and "instrumental" not in model_stems:
        names.append("instrumental")
    names += [f"no_{s}" for s in model_stems if f"no_{s}" not in model_stems]
    return names


def check_stem_names(model_stems: Sequence[str], source: str = "model") -> None:
    """Stem names become file names: reject any that could leave the output folder."""
    for name in model_stems:
        if not _SAFE_NAME.match(name) or ".." in name:
            raise SeparatorError(
                f"{source}: stem name {name!r} is not a safe file name "
                "(letters, digits, '_', '-', '.', '+' only)"
            )


def resolve_stems(
    model_stems: Sequence[str],
    requested: str | Sequence[str] | None = None,
    *,
    residual: str = "minus",
    residuals: bool = True,
) -> list[StemPlan]:
    """Map requested names (a list or "vocals,drums"; None = all model stems) to plans.

    `instrumental` is the mixture minus `vocals`, `no_<stem>` the mixture minus `<stem>`, unless
    the model has a stem of that name itself; with `residual="add"`, they are the sum of the
    model's other stems instead. `residuals=False` (a model whose output is not a part of the
    mixture, e.g. restoration) offers none. Unknown names raise `SeparatorError` listing the
    accepted ones.
    """
    if residual not in ("minus", "add"):
        raise SeparatorError(f"unknown `residual` {residual!r}; use minus or add")
    if requested is None:
        names = list(model_stems)
    elif isinstance(requested, str):
        names = [s.strip() for s in requested.split(",") if s.strip()]
    else:
        names = [s.strip() for s in requested]
    if not names:
        raise SeparatorError(
            "no stems requested; available: " + ", ".join(available_stems(model_stems, residuals))
        )
    plans: list[StemPlan] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        if not residuals and name not in model_stems:
            raise SeparatorError(
                f"unknown stem {name!r}; this model has: {', '.join(model_stems)} (its output is "
                "not a part of the mixture, e.g. a restoration model, so it has no residual stems)"
            )
        plan = _plan(model_stems, name)
        if residual == "add" and plan.minus:
            others = tuple(i for i in range(len(model_stems)) if i not in plan.minus)
            plan = StemPlan(name, adds=others)
        plans.append(plan)
    return plans


def _plan(model_stems: Sequence[str], name: str) -> StemPlan:
    stems = list(model_stems)
    if name in stems:
        return StemPlan(name, index=stems.index(name))
    if name == "instrumental" and "vocals" in stems:
        return StemPlan(name, minus=(stems.index("vocals"),))
    if name.startswith("no_") and name[3:] in stems:
        return StemPlan(name, minus=(stems.index(name[3:]),))
    raise SeparatorError(
        f"unknown stem {name!r}; this model has: {', '.join(available_stems(model_stems))}"
    )
