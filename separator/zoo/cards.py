"""Model cards: one YAML file that says how to build a model and where its weights are.

The same format serves the embedded default model, community checkpoints and what our training
recipes export:

    name: bs_roformer_example
    architecture: bs_roformer            # a family in separator.nn.FAMILIES
    model: {dim: 384, depth: 6, ...}     # constructor arguments, as the reference's config has them
    stems: [vocals, other]
    stem_names: {no_reverb: No Reverb}   # optional: safe stem name -> the checkpoint config's name
    sample_rate: 44100
    chunk_size: 352800                   # samples per chunk the model was trained on
    weights: {file: x.safetensors, url: https://..., sha256: ..., size: 123}
    # several files (a demucs bag): weights: {files: [{url/urls, sha256 or sha256_prefix}, ...]}
                                         # or urls: [first, mirror, ...], tried in order
    pipeline: {engine: apply_model, shifts: 1}   # only where the reference's chunking differs
    license: MIT
    source: who trained it and where it is documented
    sdr: {benchmark: musdb18hq, vocals: 11.0}

An ensemble card (`ensemble: {models, method, weights, stems}`) fixes a combination of models; a
chain card (`chain: [a:vocals, b:noreverb, c]`) runs models one after another on one stem each.
An MSST YAML (`audio:` / `model:` / `training:`) is read into a ModelCard through its family's
`from_msst`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from separator.errors import ConfigError
from separator.files import atomic_write, plain, read_yaml, sha256_file
from separator.names import check_name, safe_name, safe_stem_names
from separator.nn import get_family, infer_msst_family, msst_model_section
from separator.zoo.pipeline import PipelineSpec, resolve_pipeline

_HEX = re.compile(r"[0-9a-fA-F]{1,64}")
# How an ensemble combines its members' stems (separator.inference.combine says how each works):
# element-wise on the waveforms, per bin of our STFT, or per bin as MSST's ensemble.py does.
ENSEMBLE_METHODS = (
    "avg", "median", "min_wave", "max_wave",
    "max_spec", "min_spec",
    "avg_fft", "median_fft", "min_fft", "max_fft",
)  # fmt: skip
# Other tools' names for the same methods (MSST's ensemble.py, audio-separator's presets).
METHOD_ALIASES = {"avg_wave": "avg", "median_wave": "median"}


def canonical_method(method: str) -> str:
    """Our name of an ensemble method (`avg_wave` is MSST's name of `avg`)."""
    return METHOD_ALIASES.get(method, method)


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
    pipeline: dict[str, Any] = field(default_factory=dict)  # see separator.zoo.pipeline
    # {safe stem name: the name in the checkpoint's config} for stems whose name was mapped to a
    # file-name-safe one ("No Reverb" -> no_reverb); stems named as in the config are not listed.
    stem_names: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "model name")
        get_family(self.architecture)
        if not isinstance(self.model, Mapping):
            raise ConfigError("`model:` must be a mapping of constructor arguments")
        if not isinstance(self.stems, (list, tuple)) or not self.stems:
            raise ConfigError("`stems:` must be a non-empty list of stem names")
        object.__setattr__(self, "stems", tuple(check_name(s) for s in self.stems))
        if len(set(self.stems)) != len(self.stems):
            raise ConfigError(f"duplicate stem names {self.stems}")
        for key in ("sample_rate", "chunk_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"`{key}:` must be a positive integer, got {value!r}")
        if not isinstance(self.weights, Mapping):
            raise ConfigError("`weights:` must be a mapping (file, url, sha256, size)")
        files = self.weights.get("files")
        if files is not None and not (
            isinstance(files, list) and files and all(isinstance(f, Mapping) for f in files)
        ):
            raise ConfigError("`weights.files:` must be a list of {url/file, sha256, ...}")
        for entry in self.weight_entries:
            _check_urls(entry)
            prefix = entry.get("sha256_prefix")
            if prefix is not None and not (isinstance(prefix, str) and _HEX.fullmatch(prefix)):
                raise ConfigError(f"`sha256_prefix` {prefix!r} must be a quoted hex string")
        resolve_pipeline(self.architecture, self.pipeline)
        check_stem_names(self.stem_names, self.stems)

    @property
    def weights_path(self) -> Path | None:
        """Local weights file named by the card (relative to the card's folder), if any."""
        return self.entry_path(self.weights)

    @property
    def weight_entries(self) -> list[dict[str, Any]]:
        """One {file/url, sha256 or sha256_prefix, size} per weights file, in model order."""
        if "files" in self.weights:
            return [dict(f) for f in self.weights["files"]]
        return [dict(self.weights)] if self.weights else []

    def entry_path(self, entry: Mapping[str, Any]) -> Path | None:
        """The local file a weights entry names (relative to the card's folder), if any."""
        name = entry.get("file")
        if not name:
            return None
        p = Path(str(name))
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    @property
    def spec(self) -> PipelineSpec:
        """The pipeline the engine runs this model with (family default + `pipeline:`)."""
        return resolve_pipeline(self.architecture, self.pipeline)

    @property
    def urls(self) -> tuple[str, ...]:
        """Where the (one) weights file can be downloaded: `weights.urls` (the first, then its
        mirrors), or the one `weights.url`; empty for a local file or several files."""
        return entry_urls(self.weights)

    @property
    def where(self) -> str:
        """How errors name this card: its file, else its name."""
        return str(self.path) if self.path else f"model {self.name}"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        out["stems"] = list(self.stems)
        out["model"] = plain(self.model)
        return {k: v for k, v in out.items() if v not in ("", {}, [], None)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: Path | None = None) -> ModelCard:
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        where = f"{path}: " if path else ""
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{where}unknown card key(s): {', '.join(unknown)}")
        missing = [k for k in ("name", "architecture", "model", "stems") if k not in values]
        if missing:
            raise ConfigError(f"{where}card lacks required key(s): {', '.join(missing)}")
        where = where or f"card {values.get('name')}: "
        try:
            return cls(**values, path=path)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None


def entry_urls(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """A weights entry's download URLs: `urls` (the first, then its mirrors), or the one `url`."""
    urls = entry.get("urls") or [entry.get("url")]
    return tuple(str(u) for u in urls if u)


def _check_urls(weights: Mapping[str, Any]) -> None:
    """`weights.url` (one string) or `weights.urls` (a non-empty list of strings), not both."""
    urls = weights.get("urls")
    if urls is None:
        if "url" in weights and not isinstance(weights["url"], str):
            raise ConfigError("`weights.url` must be one URL; list mirrors in `weights.urls`")
        return
    if "url" in weights:
        raise ConfigError(
            "give `weights.url` or `weights.urls` (first URL, then mirrors), not both"
        )
    if not isinstance(urls, (list, tuple)) or not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError("`weights.urls` must be a non-empty list of URLs")
    if len(set(urls)) != len(urls):
        raise ConfigError("`weights.urls` lists a URL twice")


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
    def from_dict(cls, values: Mapping[str, Any], path: Path | None = None) -> EnsembleCard:
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
                method=canonical_method(str(spec.get("method", "avg"))),
                weights=tuple(float(w) for w in weights) if weights is not None else None,
                stem_models={str(k): tuple(v) for k, v in (spec.get("stems") or {}).items()},
                path=path,
                **values,
            )
        except (ConfigError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}{e}") from None


def parse_chain(spec: str | list) -> tuple[tuple[str, str | None], ...]:
    """`"a:vocals > b:noreverb > c"` (or a list of `model[:stem]` strings) -> ((model, stem), ...).

    Each step but the last names the stem of its output that the next step separates; the last
    step's stems are the chain's outputs. A step's model may be an ensemble (`a,b:vocals`).
    """
    parts = [p.strip() for p in spec.split(">")] if isinstance(spec, str) else list(spec)
    steps = []
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ConfigError(f"chain {spec!r}: empty step; write `a:vocals > b:noreverb > c`")
        model, _, stem = part.partition(":")
        for name in model.split(","):
            check_name(name.strip(), "model name")
        steps.append((model.strip(), check_name(stem.strip()) if stem else None))
    if len(steps) < 2:
        raise ConfigError(f"chain {spec!r}: a chain needs at least two steps (`a:vocals > b`)")
    missing = [m for m, stem in steps[:-1] if stem is None]
    if missing:
        raise ConfigError(
            f"chain {spec!r}: step {missing[0]!r} must name the stem the next step takes "
            f"(`{missing[0]}:vocals > ...`)"
        )
    if steps[-1][1] is not None:
        raise ConfigError(
            f"chain {spec!r}: the last step takes no stem; all its stems are outputs (choose "
            "them with `stems`)"
        )
    return tuple(steps)


@dataclass(frozen=True)
class ChainCard:
    """Models run one after another, each on one stem of the previous one's output:
    `chain: [a:vocals, b:noreverb, c]` (or the string `a:vocals > b:noreverb > c`)."""

    name: str
    steps: tuple[tuple[str, str | None], ...]
    license: str = "see the member models"
    source: str = ""
    sdr: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "model name")

    @property
    def models(self) -> tuple[str, ...]:
        """The models of the steps (an ensemble step counts its members)."""
        return tuple(n.strip() for m, _ in self.steps for n in m.split(","))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: Path | None = None) -> ChainCard:
        where = f"{path}: " if path else ""
        values = dict(values)
        spec = values.pop("chain")
        unknown = sorted(set(values) - {"name", "license", "source", "sdr", "notes"})
        if unknown:
            raise ConfigError(f"{where}unknown chain card key(s): {', '.join(unknown)}")
        if "name" not in values:
            raise ConfigError(f"{where}a chain card needs `name` and `chain`")
        try:
            return cls(steps=parse_chain(spec), path=path, **values)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{where}{e}") from None


Card = ModelCard | EnsembleCard | ChainCard


def check_ensemble(
    models: tuple[str, ...] | list[str], weights: Any, method: str, where: str
) -> None:
    """Validate an ensemble's members, weights and method."""
    if len(models) < 2:
        raise ConfigError(f"{where}: an ensemble needs at least two models, got {list(models)}")
    if canonical_method(method) not in ENSEMBLE_METHODS:
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


# --- reading and writing ------------------------------------------------------------------------
def is_card(data: Mapping[str, Any]) -> bool:
    """A card has `architecture` and `stems`; an MSST config has `audio`/`model`/`training`."""
    return "architecture" in data and "stems" in data


def card_from_msst(
    data: Mapping[str, Any],
    path: Path | None = None,
    *,
    name: str | None = None,
    model_type: str | None = None,
) -> ModelCard:
    """Turn an MSST YAML (`audio:`, `model:`, `training:`) into a ModelCard.

    `model_type` is MSST's name of the family (its `--model_type`); without it the family is
    inferred from the `model:` section's keys where that is unambiguous.
    """
    where = f"{path}: " if path else ""
    try:
        family = (
            get_family(model_type) if model_type else infer_msst_family(msst_model_section(data))
        )
        if family.from_msst is None:
            raise ConfigError(f"{family.name} models are not read from MSST configs")
        fields = family.from_msst(data)
        fields.setdefault("stem_names", msst_stem_origins(data, fields["stems"]))
        stem_name = name or (path.stem if path else "model")
        return ModelCard(
            name=safe_name(stem_name) or "model", architecture=family.name, path=path, **fields
        )
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def check_stem_names(stem_names: Any, stems: tuple[str, ...]) -> None:
    """`stem_names:` maps some of the card's stems to strings (their names in the config)."""
    if not isinstance(stem_names, Mapping):
        raise ConfigError("`stem_names:` must map stem names to the config's original names")
    for safe, original in stem_names.items():
        if safe not in stems or not isinstance(original, str):
            raise ConfigError(
                f"`stem_names:` entry {safe!r}: {original!r} must name one of the card's stems "
                f"{list(stems)} and give its original name as a string"
            )


def msst_stem_origins(data: Mapping[str, Any], stems: list[str]) -> dict[str, str]:
    """{safe: original} for the stems of an MSST YAML whose names were made file-name safe.

    The originals are the YAML's `training.target_instrument`, else `training.instruments`, else
    `model.sources` (SCNet), mapped as every family's `from_msst` maps them
    (`separator.nn.family.safe_stem_names`); a family that names its stems otherwise records none.
    """
    training = data.get("training") or {}
    if training.get("target_instrument"):
        names = [training["target_instrument"]]
    else:
        names = list(training.get("instruments") or (data.get("model") or {}).get("sources") or [])
    mapping = safe_stem_names(names)
    if list(mapping) != list(stems):
        return {}
    return {safe: original for safe, original in mapping.items() if safe != original}


def read_any_card(
    config: str | Path | Mapping[str, Any],
    *,
    model_type: str | None = None,
    path: Path | None = None,
) -> Card:
    """A model card, an ensemble card, or an MSST YAML read as a model card.

    `path`: where an already-parsed mapping was read from (weights paths are relative to it).
    """
    if not isinstance(config, Mapping):
        path = Path(config)
        config = read_yaml(path)
    if "ensemble" in config:
        return EnsembleCard.from_dict(config, path)
    if "chain" in config:
        return ChainCard.from_dict(config, path)
    if is_card(config):
        if model_type is not None and model_type != config.get("architecture"):
            where = f"{path}: " if path else ""
            raise ConfigError(
                f"{where}the card's architecture is {config.get('architecture')!r}, not the "
                f"given model type {model_type!r}"
            )
        return ModelCard.from_dict(config, path)
    return card_from_msst(config, path, model_type=model_type)


def read_card(
    config: str | Path | Mapping[str, Any], *, model_type: str | None = None
) -> ModelCard:
    """A ModelCard from a card YAML, an MSST YAML, or an already-parsed mapping of either."""
    card = read_any_card(config, model_type=model_type)
    if not isinstance(card, ModelCard):
        kind = "an ensemble" if isinstance(card, EnsembleCard) else "a chain"
        raise ConfigError(f"{card.path or card.name}: {kind} card, not a single model")
    return card


def save_card(card: ModelCard, path: Path) -> None:
    """Write a card as YAML, atomically."""
    import yaml

    text = yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write(path, text.encode())


def weights_entry(path: Path) -> dict[str, Any]:
    """A card's `weights` entry for a weights file beside the card: name, sha256, size."""
    return {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
