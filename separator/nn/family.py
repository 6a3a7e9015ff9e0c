"""What a model family is to the package: `Family`, and the helpers every family shares.

A family turns a card's `model:` section (its constructor arguments, as the reference's config
writes them) into an `nn.Module` that follows the engine protocol: `forward((B, C, T)) ->
(B, S, C, T)` at the input's length, and the attributes `sample_rate`, `stems`, `audio_channels`
and `chunk_size`. It also names the checkpoint format its weights come in, and, for families that
MSST trains, how an MSST YAML (`audio:` / `model:` / `training:`) becomes card fields.

Families are listed in `separator.nn.registry`; nothing here imports a family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from separator.errors import ConfigError
from separator.names import safe_stem_names

# Checkpoint formats the zoo can read (the zoo keeps one reader per format).
CHECKPOINT_FORMATS = ("state_dict", "demucs")


@dataclass(frozen=True)
class Family:
    """One model family (torchaudio-pipeline style: a small record with a docstring).

    name: the card's `architecture` (MSST's `model_type` where MSST has the family).
    build: `build(model, *, sample_rate, stems, chunk_size) -> nn.Module`; `model` is the card's
        `model:` mapping. The module comes back with the engine attributes set (see `set_io`).
        Bad configurations raise `ConfigError` naming the field.
    checkpoint_format: how its weights are stored: "state_dict" (MSST .ckpt/.pth/.pt,
        safetensors) or "demucs" (demucs .th packages and bag YAMLs).
    from_msst: MSST YAML mapping -> card fields {model, stems, sample_rate, chunk_size}; None
        for families MSST does not train.
    msst_match: `model:` section -> how specifically it looks like this family's MSST config:
        0 for "not this family", higher for a more specific match (a key only this family has
        scores above a generic shape). The type of a raw MSST YAML is inferred only when one
        family has the highest score.
    pipeline: the reference's chunking pipeline where it is not the engine's overlap-add
        (`separator.zoo.pipeline`: e.g. {engine: apply_model, overlap: 0.25, shifts: 1,
        normalize: true} for demucs); a card's `pipeline:` overrides its keys. None: overlap-add.
    residuals: whether the mixture minus an output means something. True for separators (the
        residual stems `instrumental` and `no_<stem>`); False for models whose output is not a
        part of the mixture, such as restoration (Apollo's one output is the restored mixture).
        The loader sets it on the module as `residuals`.
    """

    name: str
    build: Callable[..., nn.Module]
    checkpoint_format: str = "state_dict"
    from_msst: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    msst_match: Callable[[Mapping[str, Any]], int] | None = None
    description: str = ""
    pipeline: Mapping[str, Any] | None = None
    residuals: bool = True

    def __post_init__(self) -> None:
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConfigError(
                f"family {self.name}: unknown checkpoint_format {self.checkpoint_format!r}"
            )


def set_io(
    module: nn.Module,
    *,
    sample_rate: int,
    stems: Sequence[str],
    chunk_size: int,
    audio_channels: int,
    num_stems: int,
) -> nn.Module:
    """Set the engine attributes on `module`; stem names must match the outputs it has."""
    stems = tuple(stems)
    if len(stems) != num_stems:
        raise ConfigError(
            f"{len(stems)} stem names {list(stems)} given for a model with {num_stems} "
            "output stem(s); the card's `stems` (MSST: training.instruments / "
            "target_instrument) must list one name per output"
        )
    for name, value in (("sample_rate", sample_rate), ("chunk_size", chunk_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    module.sample_rate = sample_rate
    module.stems = stems
    module.chunk_size = chunk_size
    module.audio_channels = audio_channels
    return module


def check_channels(got: int, expected: int, field: str = "model.audio_channels") -> None:
    """A forward's input channel count against the model's (`field` is the config's name for it)."""
    if got != expected:
        raise ConfigError(f"model expects {expected} audio channel(s) ({field}), got {got}")


def msst_stem_names(
    config: Mapping[str, Any], num_stems: int, default: Sequence[str] | None = None
) -> dict[str, str]:
    """{safe name: YAML name} of an MSST YAML's stems (see `msst_stems`)."""
    training = config.get("training") or {}
    target = training.get("target_instrument")
    instruments = list(training.get("instruments") or [])
    if target:
        if num_stems != 1:
            raise ConfigError(f"training.target_instrument is set but model.num_stems={num_stems}")
        return safe_stem_names([target])
    if instruments:
        if len(instruments) != num_stems:
            raise ConfigError(
                f"training.instruments lists {len(instruments)} stems but model.num_stems="
                f"{num_stems}; set training.target_instrument for a one-stem model"
            )
        return safe_stem_names(instruments)
    if default is not None and len(default) == num_stems:
        return safe_stem_names(default)
    return {f"stem{i}": f"stem{i}" for i in range(num_stems)}


def msst_stems(
    config: Mapping[str, Any], num_stems: int, default: Sequence[str] | None = None
) -> list[str]:
    """Stem names of an MSST YAML: `training.target_instrument` (one stem) or
    `training.instruments` (all of them), checked against the model's `num_stems`; else
    `default` (e.g. SCNet's `model.sources`), else `stem0`, `stem1`, ...

    The names come back safe for file names (`safe_stem_names`: "No Reverb" -> "no_reverb").
    """
    return list(msst_stem_names(config, num_stems, default))


def msst_audio(config: Mapping[str, Any], default_rate: int = 44100) -> tuple[int, int]:
    """(sample_rate, chunk_size) from an MSST YAML's `audio:` section (8 s chunks by default)."""
    audio = config.get("audio") or {}
    model = config.get("model") or {}
    try:
        rate = int(audio.get("sample_rate", model.get("sample_rate", default_rate)))
        chunk = int(audio.get("chunk_size", 8 * rate))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"audio.sample_rate / audio.chunk_size must be integers ({e})") from None
    return rate, chunk
