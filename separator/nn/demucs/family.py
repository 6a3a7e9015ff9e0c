"""The Demucs family records, constructor-argument handling, and bags of models.

A card's `model:` mapping is `{klass: htdemucs|hdemucs|demucs, kwargs: {...}}` with `kwargs`
exactly as demucs's constructor takes them (what a `.th` package stores), or, for a bag,
`{models: [{klass, kwargs}, ...], weights: [[...], ...], segment: seconds}`.

Two records share the builder:
- `demucs` (checkpoint format "demucs"): demucs `.th` packages and bag YAMLs.
- `htdemucs` (checkpoint format "state_dict"): MSST's model_type name, for HTDemucs checkpoints
  trained with MSST (plain state dicts). Only this one has `msst_match`, so a raw MSST YAML
  infers one family; both translate MSST YAMLs with `from_msst`.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import ConfigError
from separator.nn.demucs.demucs_v2 import Demucs
from separator.nn.demucs.hdemucs import HDemucs
from separator.nn.demucs.htdemucs import HTDemucs
from separator.nn.family import Family, set_io

KLASSES: dict[str, type[nn.Module]] = {"htdemucs": HTDemucs, "hdemucs": HDemucs, "demucs": Demucs}
DemucsModel = HTDemucs | HDemucs | Demucs


def parse_segment(value: Any, where: str = "segment") -> Fraction | float | int:
    """A segment in seconds: an int, a float or a Fraction as given; also the HF JSON form
    `{_type: fraction, numerator, denominator}` and a string "n/d" (both exact Fractions)."""
    if isinstance(value, Mapping) and value.get("_type") == "fraction":
        try:
            value = Fraction(int(value["numerator"]), int(value["denominator"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise ConfigError(f"{where}: bad fraction {dict(value)} ({e})") from None
    elif isinstance(value, str):
        try:
            value = Fraction(value)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{where}: {value!r} is not a number of seconds") from None
    ok = isinstance(value, (numbers.Real, Fraction)) and not isinstance(value, bool)
    if not ok or not value > 0:
        raise ConfigError(f"{where} must be a positive number of seconds, got {value!r}")
    return value


def _check_kwargs(klass: str, kwargs: dict[str, Any]) -> None:
    """The arguments every class reads first; the constructors check the rest."""
    sources = kwargs.get("sources")
    if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
        raise ConfigError(f"demucs {klass}: kwargs.sources must be a non-empty list of names")
    if not all(isinstance(s, str) for s in sources):
        raise ConfigError(f"demucs {klass}: kwargs.sources must be strings, got {list(sources)}")
    for name in ("audio_channels", "samplerate", "channels", "depth"):
        value = kwargs.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"demucs {klass}: kwargs.{name} must be a positive integer, got {value!r}"
            )


def make_model(klass: str, kwargs: Mapping[str, Any], args: Sequence[Any] = ()) -> DemucsModel:
    """Construct `klass` from demucs constructor arguments (as a package stores them).

    Unknown keyword arguments are dropped with a warning naming them, as demucs's
    `states.load_model` does; anything else wrong is a ConfigError.
    """
    cls = KLASSES.get(klass)
    if cls is None:
        raise ConfigError(f"demucs: unknown klass {klass!r} (expected one of {sorted(KLASSES)})")
    params = inspect.signature(cls).parameters
    kwargs = dict(kwargs)
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        warnings.warn(
            f"demucs {klass}: dropping unknown constructor argument(s) "
            f"{', '.join(unknown)} (demucs 4.1.0 drops them too)",
            stacklevel=2,
        )
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        kwargs = dict(inspect.signature(cls).bind_partial(*args, **kwargs).arguments)
    except TypeError as e:
        raise ConfigError(f"demucs {klass}: bad arguments ({e})") from None
    if "segment" in kwargs:
        kwargs["segment"] = parse_segment(kwargs["segment"], f"demucs {klass}: kwargs.segment")
    _check_kwargs(klass, kwargs)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"demucs {klass}: {e}") from None
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"demucs {klass}: bad kwargs ({first})") from None


def klass_name(model: nn.Module) -> str:
    """'htdemucs', 'hdemucs' or 'demucs' for one of our modules."""
    for name, cls in KLASSES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"not a Demucs model: {type(model).__name__}")


def training_length(model: nn.Module) -> int:
    """int(segment · samplerate), Python semantics: what demucs's apply_model splits at."""
    return int(model.segment * model.samplerate)


class DemucsBag(nn.Module):
    """demucs's `BagOfModels`: members as `models.0.*`, `models.1.*`, per-source weights, and an
    optional segment override. forward: (b, c, n) -> (b, s, c, n), the weighted average of the
    members' forwards.

    demucs's own `BagOfModels.forward` raises ("call apply_model"): apply_model runs every member
    through its own chunking (its own segment, shifts drawn per member, each chunk widened to
    the member's valid length with neighbouring samples) and only then averages. This forward
    is that average for one chunk that every member runs as is.
    """

    def __init__(
        self,
        models: Sequence[DemucsModel],
        weights: Sequence[Sequence[float]] | None = None,
        segment: Any = None,
    ) -> None:
        super().__init__()
        if not models:
            raise ConfigError("a bag of models needs at least one model")
        first = models[0]
        for other in models:
            same = (other.sources, other.samplerate, other.audio_channels)
            if same != (first.sources, first.samplerate, first.audio_channels):
                raise ConfigError("bag members differ in sources, samplerate or audio_channels")
        if segment is not None:
            segment = parse_segment(segment, "bag segment")
            for other in models:
                # demucs 4.1.0 (PyPI) rule. 4.0.1 overrides every member unconditionally;
                # GitHub main (4.1.0a2) overrides only non-HTDemucs members, and only when
                # segment > member.segment.
                if not isinstance(other, HTDemucs) or segment <= other.segment:
                    other.segment = segment
        self.segment = segment
        self.sources, self.samplerate = list(first.sources), first.samplerate
        self.audio_channels = first.audio_channels
        self.models = nn.ModuleList(models)
        self.weights = self._check_weights(weights, len(models), len(self.sources))

    @staticmethod
    def _check_weights(weights: Any, n_models: int, n_sources: int) -> list[list[float]]:
        if weights is None:
            return [[1.0] * n_sources for _ in range(n_models)]
        ok = isinstance(weights, Sequence) and len(weights) == n_models
        ok = ok and all(isinstance(w, Sequence) and len(w) == n_sources for w in weights)
        if not ok:
            raise ConfigError(f"bag weights must be {n_models} lists of {n_sources} numbers")
        out = [[float(x) for x in w] for w in weights]
        for k in range(n_sources):
            if sum(w[k] for w in out) == 0:
                raise ConfigError(f"bag weights for source {k} are all zero")
        return out

    @property
    def max_allowed_segment(self) -> float:
        """The smallest HTDemucs member segment (demucs refuses a longer --segment)."""
        segments = [float(m.segment) for m in self.models if isinstance(m, HTDemucs)]
        return min(segments, default=float("inf"))

    def forward(self, mix: Tensor) -> Tensor:
        """(b, c, n) -> (b, s, c, n): Σ_m w[m, k]·member_m(mix)[:, k] / Σ_m w[m, k]."""
        estimate: Tensor | float = 0.0
        totals = [0.0] * len(self.sources)
        for model, weights in zip(self.models, self.weights):
            out = model(mix)
            scale = torch.tensor(weights, dtype=out.dtype, device=out.device)
            estimate = estimate + out * scale[:, None, None]
            totals = [t + w for t, w in zip(totals, weights)]
        divisor = torch.tensor(totals, dtype=mix.dtype, device=mix.device)
        return estimate / divisor[:, None, None]


# --- cards -> modules --------------------------------------------------------------------------
def build_model(model: Mapping[str, Any]) -> DemucsModel | DemucsBag:
    """A module from a card's `model:` mapping (one model, or a bag), without engine attributes."""
    if not isinstance(model, Mapping):
        raise ConfigError("demucs model: expected a mapping {klass, kwargs} or {models, ...}")
    if "models" in model:
        extra = set(model) - {"models", "weights", "segment"}
        if extra:
            raise ConfigError(f"demucs bag: unknown key(s) {sorted(extra)}")
        members = model["models"]
        if not isinstance(members, Sequence) or isinstance(members, str):
            raise ConfigError("demucs bag: `models` must be a list of {klass, kwargs} mappings")
        built = [build_model(m) for m in members]
        if any(isinstance(m, DemucsBag) for m in built):
            raise ConfigError("demucs bag: a member cannot itself be a bag")
        return DemucsBag(built, model.get("weights"), model.get("segment"))
    extra = set(model) - {"klass", "kwargs", "args"}
    if extra:
        raise ConfigError(f"demucs model: unknown key(s) {sorted(extra)} (expected klass, kwargs)")
    kwargs = model.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError("demucs model: `kwargs` must be a mapping")
    return make_model(str(model.get("klass")), kwargs, model.get("args") or ())


def _chunk(module: nn.Module) -> int:
    if isinstance(module, DemucsBag):
        return min(training_length(m) for m in module.models)
    return training_length(module)


def build(
    model: Mapping[str, Any],
    *,
    sample_rate: int | None = None,
    stems: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> nn.Module:
    """`Family.build`: the module with `sample_rate`, `stems`, `audio_channels`, `chunk_size`.

    stems must equal the model's `sources`, sample_rate its `samplerate`; chunk_size is the
    training length int(segment · samplerate) (for a bag, the shortest member's). A card value
    that disagrees is a ConfigError; None takes the model's.
    """
    module = build_model(model)
    sources = list(module.sources)
    if stems is not None and list(stems) != sources:
        raise ConfigError(f"stems {list(stems)} differ from the model's sources {sources}")
    if sample_rate is not None and sample_rate != module.samplerate:
        raise ConfigError(
            f"sample_rate {sample_rate} differs from the model's samplerate {module.samplerate}"
        )
    chunk = _chunk(module)
    if chunk_size and chunk_size != chunk:
        raise ConfigError(
            f"chunk_size {chunk_size} differs from the model's training length "
            f"{chunk} = int(segment · samplerate); change kwargs.segment instead"
        )
    return set_io(
        module,
        sample_rate=module.samplerate,
        stems=sources,
        chunk_size=chunk,
        audio_channels=module.audio_channels,
        num_stems=len(sources),
    )


# --- MSST --------------------------------------------------------------------------------------
def _msst_klass(config: Mapping[str, Any]) -> str:
    """MSST names the section to read in `model:` (its get_model: `getattr(args, args.model)`)."""
    name = config.get("model")
    if isinstance(name, str) and name in KLASSES:
        return name
    for candidate in KLASSES:
        if isinstance(config.get(candidate), Mapping):
            return candidate
    raise ConfigError("MSST config: no htdemucs:/hdemucs:/demucs: section")


def from_msst(config: Mapping[str, Any]) -> dict[str, Any]:
    """An MSST YAML -> card fields, as MSST's `models/demucs4ht.get_model` builds the model:
    the section plus sources/audio_channels/samplerate/segment from `training:`.

    MSST's HTDemucs copy defaults to `use_train_segment=False` (runs at the chunk's length);
    that default is written into the kwargs. Its `num_subbands` (1 in the released configs)
    is not a demucs argument: 1 is dropped, anything else refused.
    """
    klass = _msst_klass(config)
    section = config.get(klass)
    if not isinstance(section, Mapping):
        raise ConfigError(f"MSST config: `{klass}:` must be a mapping of constructor arguments")
    kwargs = dict(section)
    subbands = kwargs.pop("num_subbands", 1)
    if subbands != 1:
        raise ConfigError(
            f"MSST {klass}.num_subbands={subbands}: MSST's sub-band HTDemucs "
            "variant is not supported (only num_subbands: 1)"
        )
    training = config.get("training") or {}
    for key in ("instruments", "channels", "samplerate", "segment"):
        if training.get(key) is None:
            raise ConfigError(f"MSST config: training.{key} is required for {klass}")
    kwargs.update(
        sources=[str(s) for s in training["instruments"]],
        audio_channels=training["channels"],
        samplerate=training["samplerate"],
        segment=parse_segment(training["segment"], "MSST training.segment"),
    )
    if klass == "htdemucs":
        kwargs.setdefault("use_train_segment", False)
    rate = kwargs["samplerate"]
    return {
        "model": {"klass": klass, "kwargs": kwargs},
        "stems": kwargs["sources"],
        "sample_rate": rate,
        "chunk_size": int(kwargs["segment"] * rate),
    }


def msst_match(model: Any) -> int:
    """How much an MSST YAML looks like MSST's demucs route (`--model_type htdemucs`).

    Accepts the YAML's `model:` value (MSST writes `model: htdemucs`, a string naming the
    section) or the whole YAML (an `htdemucs:` section instead of a `model:` mapping)."""
    if isinstance(model, str):
        return 3 if model in KLASSES else 0
    if not isinstance(model, Mapping):
        return 0
    if any(isinstance(model.get(k), Mapping) for k in KLASSES):
        return 3
    return 2 if {"dconv_mode", "nfft"} <= set(model) else 0


FAMILY = Family(
    name="demucs",
    build=build,
    checkpoint_format="demucs",
    from_msst=from_msst,
    description="Demucs v2/v3/v4 (demucs .th packages and bags of models)",
)
MSST_FAMILY = Family(
    name="htdemucs",
    build=build,
    checkpoint_format="state_dict",
    from_msst=from_msst,
    msst_match=msst_match,
    description="Hybrid Transformer Demucs trained with MSST (plain state dicts)",
)
FAMILIES = (FAMILY, MSST_FAMILY)
