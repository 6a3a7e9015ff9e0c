"""The one loading path: name or path -> card -> family -> nn.Module with verified weights.

    load_model("bs_roformer_viperx_1297")                    # a known name (downloaded once)
    load_model("card.yaml")                                  # a card; its weights file or URL
    load_model("config.yaml", "model.ckpt")                  # an MSST YAML and its checkpoint
    load_model("config.yaml", "model.ckpt", model_type="scnet")
    load_model("runs/my_run/")                               # a folder holding one card

Every route ends in `load_card`: the family (`card.architecture`) builds the module, the weights
come from the card's local file (checked against its sha256) or its URL (downloaded into the
cache, checked), or from an explicit checkpoint, and are read by the family's checkpoint format
and loaded with `strict=True`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import CheckpointError, ConfigError, SeparatorError
from separator.files import read_yaml, sha256_file
from separator.names import check_name
from separator.nn import get_family
from separator.zoo.cards import (
    Card,
    ChainCard,
    EnsembleCard,
    ModelCard,
    entry_urls,
    read_any_card,
    read_card,
)
from separator.zoo.catalog import all_cards, checkpoint_names
from separator.zoo.checks import check_chunk_size, culprit_field
from separator.zoo.demucs import card_from_bag, card_from_package, is_bag, load_demucs_card
from separator.zoo.download import cache_dir, fetch, url_file_name
from separator.zoo.formats import read_weights
from separator.zoo.mismatch import mismatch_message
from separator.zoo.tied import decide_by_checkpoint, msst_source

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".safetensors", ".th")
YAML_SUFFIXES = (".yaml", ".yml")


# --- cards -> modules ----------------------------------------------------------------------------
def build_model(card: ModelCard) -> nn.Module:
    """Construct (untrained) the model a card describes, with its engine attributes set (and
    `residuals`, from its family)."""
    family = get_family(card.architecture)
    try:
        module = family.build(
            dict(card.model),
            sample_rate=card.sample_rate,
            stems=card.stems,
            chunk_size=card.chunk_size,
        )
        module.pipeline = card.spec
    except (ConfigError, TypeError, ValueError) as e:  # TypeError etc.: deep in a constructor
        first = (str(e).splitlines() or [type(e).__name__])[0]
        key = culprit_field(card.model, first)
        if key is not None:
            raise ConfigError(
                f"{card.where}: bad `model.{key}` {card.model[key]!r} ({first})"
            ) from None
        if isinstance(e, ConfigError):
            raise ConfigError(f"{card.where}: {e}") from None
        raise ConfigError(f"{card.where}: bad value in `model:` ({first})") from None
    module.residuals = family.residuals
    return module


def load_weights(
    model: nn.Module, sd: Mapping[str, Tensor], *, source: Path, config: Path | None = None
) -> None:
    """`load_state_dict(strict=True)` with a readable error when checkpoint and config disagree."""
    problem = mismatch_message(model.state_dict(), sd, source, config)
    if problem is not None:
        raise CheckpointError(problem)
    model.load_state_dict(dict(sd), strict=True)


def load_card(
    card: ModelCard,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    offline: bool | None = None,
    msst: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The model a card describes, with `checkpoint` (default: the card's weights) loaded.

    Returns the model in eval mode on `device`, with `sample_rate`, `stems`, `audio_channels` and
    `chunk_size` set, and `model_name` (the card's name, for messages). `msst`: the MSST YAML the
    card was read from when its model type was inferred; the checkpoint's keys then pick among
    the families the YAML could be (`separator.zoo.tied`).
    """
    fmt = get_family(card.architecture).checkpoint_format
    if fmt == "demucs":  # packages build their own members; bags have a file per member
        paths = (
            [Path(checkpoint)] if checkpoint is not None else weights_files(card, offline=offline)
        )
        model = load_demucs_card(card, paths)
        model.pipeline, model.model_name = card.spec, card.name
        model.residuals = get_family(card.architecture).residuals
        return model.to(device).eval()
    path = Path(checkpoint) if checkpoint is not None else weights_file(card, offline=offline)
    card, state = checkpoint_card(card, path, msst, given=checkpoint is not None)
    model = build_model(card)
    load_weights(model, state, source=path, config=card.path)
    model.model_name = card.name
    model = model.to(device).eval()
    check_chunk_size(model, card.where)
    return model


def checkpoint_card(
    card: ModelCard, path: Path, msst: Mapping[str, Any] | None = None, *, given: bool = True
) -> tuple[ModelCard, dict[str, Tensor]]:
    """The checkpoint's state dict, and the card to load it into (see `load_card`'s `msst`).
    An unreadable file the card's weights entry named (not `given`) names that field."""
    try:
        state = read_weights(path, get_family(card.architecture).checkpoint_format)
    except CheckpointError as e:
        if given:
            raise
        field = "weights.file" if card.weights_path is not None else "weights.url"
        raise CheckpointError(f"{card.where}: `{field}`: {e}") from None
    if msst is not None:
        card = decide_by_checkpoint(card, msst, state, build_model)
    return card, state


# --- where a card's weights are ----------------------------------------------------------------
def cached_paths(card: ModelCard) -> list[Path | None]:
    """Where each of the card's weights files is (or will be) on this machine."""
    return [_entry_cache(card, entry) for entry in card.weight_entries]


def _entry_cache(card: ModelCard, entry: Mapping[str, Any]) -> Path | None:
    local = card.entry_path(entry)
    if local is not None:
        return local
    urls = entry_urls(entry)
    return cache_dir() / card.name / url_file_name(urls[0]) if urls else None


def cached_path(card: ModelCard) -> Path | None:
    """Where the card's (one) weights file is on this machine; None if it names none."""
    paths = cached_paths(card)
    return paths[0] if len(paths) == 1 else None


def is_cached(card: ModelCard) -> bool:
    paths = cached_paths(card)
    return bool(paths) and all(p is not None and p.is_file() for p in paths)


def weights_file(card: ModelCard, *, offline: bool | None = None, progress: bool = True) -> Path:
    """The card's weights as a verified local file, downloading them if needed.

    A local file is checked against the card's sha256 when the card gives one, whether the card
    was found by name or given by path. Cards with several files: `weights_files`.
    """
    if "files" in card.weights:
        raise SeparatorError(f"{card.where}: the card has several weights files")
    return weights_files(card, offline=offline, progress=progress)[0]


def weights_files(
    card: ModelCard, *, offline: bool | None = None, progress: bool = True
) -> list[Path]:
    """Every weights file of the card, verified (sha256, or the sha256 prefix that demucs file
    names carry), downloaded where needed."""
    entries = card.weight_entries
    if not entries:
        raise SeparatorError(f"{card.where}: the card names no weights file or URL")
    return [_entry_file(card, e, offline, progress) for e in entries]


def _entry_file(card: ModelCard, entry: Mapping[str, Any], offline, progress) -> Path:
    sha, prefix = entry.get("sha256"), entry.get("sha256_prefix")
    local = card.entry_path(entry)
    if local is not None:
        if not local.is_file():
            problem = "is a folder" if local.is_dir() else "no such file"
            raise SeparatorError(f"{card.where}: `weights.file` {local}: {problem}")
        actual = sha256_file(local) if sha or prefix else ""
        if (sha and actual != str(sha).strip().lower()) or (
            prefix and not actual.startswith(str(prefix).strip().lower())
        ):
            raise SeparatorError(
                f"{card.where}: {local} does not match the card's sha256 {sha or prefix} "
                "(corrupt or replaced); restore the file or fix the card's `weights`"
            )
        return local
    urls = entry_urls(entry)
    if not urls:
        raise SeparatorError(f"{card.where}: the card names no weights file or URL")
    dest = _entry_cache(card, entry)
    return fetch(urls, sha, dest=dest, offline=offline, progress=progress, sha256_prefix=prefix)


# --- names and paths -> cards --------------------------------------------------------------------
def resolve(
    model: str | os.PathLike | Mapping[str, Any] | Card,
    checkpoint: str | os.PathLike | None = None,
    *,
    model_type: str | None = None,
) -> tuple[Card, Path | None]:
    """The card of a name, card, MSST YAML or folder, and the checkpoint that goes with it.

    A checkpoint path may come first: `resolve("x.ckpt", "config.yaml")` is read as
    `resolve("config.yaml", "x.ckpt")`.
    """
    if isinstance(model, (ModelCard, EnsembleCard, ChainCard)):
        return model, _optional_path(checkpoint)
    if isinstance(model, Mapping):
        return read_any_card(model, model_type=model_type), _optional_path(checkpoint)
    target = Path(model)
    if target.suffix == ".th" and checkpoint is None and target.is_file():
        return card_from_package(target), None  # a demucs package brings its own card
    if target.suffix in CHECKPOINT_SUFFIXES:
        if not target.exists() and str(model) in checkpoint_names():  # a UVR file name
            return _named(str(model), checkpoint, model_type)
        if not target.exists():
            raise SeparatorError(f"{target}: no such model file")
        if checkpoint is None or Path(checkpoint).suffix not in YAML_SUFFIXES:
            raise SeparatorError(f"{target}: a checkpoint needs its YAML config; pass `config`")
        target, checkpoint = Path(checkpoint), target
    if target.suffix not in YAML_SUFFIXES and not target.exists():
        return _named(str(model), checkpoint, model_type)
    if not target.exists():
        raise SeparatorError(f"{target}: no such model file")
    if target.is_dir():
        target = _card_in_folder(target)
    if checkpoint is not None and Path(checkpoint).suffix in YAML_SUFFIXES:
        raise SeparatorError(f"{target}: a .yaml model is its own config; drop `config`")
    if checkpoint is None and is_bag(read_yaml(target)):  # demucs's bag of models
        return card_from_bag(target), None
    return read_any_card(target, model_type=model_type), _optional_path(checkpoint)


def _optional_path(checkpoint: str | os.PathLike | None) -> Path | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if not path.exists():
        raise SeparatorError(f"{path}: no such file")
    return path


def _named(name: str, checkpoint, model_type: str | None) -> tuple[Card, None]:
    """The card called `name`, or the card whose weights file is called `name` (or its stem)."""
    cards = all_cards()
    card = cards.get(name) or cards.get(checkpoint_names().get(name, ""))
    if card is None:
        raise SeparatorError(
            f"unknown model {name!r}: not a file and not a known model name (see `separator "
            "models list`); pass a name, a model card or MSST config (.yaml), a checkpoint "
            "(.ckpt/.pth/.pt/.safetensors) with its `config`, or a folder holding one card"
        )
    if checkpoint is not None:
        raise SeparatorError(f"{name}: a named model brings its own config; drop `config`")
    if model_type is not None and getattr(card, "architecture", None) != model_type:
        raise SeparatorError(f"{name}: a named model brings its own type; drop `model_type`")
    return card, None


def _card_in_folder(folder: Path) -> Path:
    """The one model card in a folder (a training run holds its recipe.yaml beside it)."""
    yamls = sorted(p for p in folder.iterdir() if p.suffix in YAML_SUFFIXES)
    cards = [p for p in yamls if _is_card_file(p)]
    if len(cards) != 1:
        raise SeparatorError(
            f"{folder}: expected one model card (.yaml with `architecture:` or `ensemble:`) in "
            f"the folder, found {len(cards)}"
        )
    return cards[0]


def _is_card_file(path: Path) -> bool:
    try:
        data = read_yaml(path)
    except ConfigError:
        return False
    return bool({"architecture", "ensemble", "chain"} & set(data))


def load_model(
    model: str | os.PathLike | Mapping[str, Any] | ModelCard,
    checkpoint: str | os.PathLike | None = None,
    *,
    model_type: str | None = None,
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> nn.Module:
    """A model from a name, a card, an MSST YAML plus checkpoint, or a folder (see the module
    doc); weights verified, loaded with `strict=True`, eval mode, on `device`.

    `model_type`: MSST's name of the family for a raw MSST YAML (otherwise inferred from its
    keys where that is unambiguous). `offline` (or SEPARATOR_OFFLINE=1) never downloads.
    """
    card, path = resolve(model, checkpoint, model_type=model_type)
    if not isinstance(card, ModelCard):
        kind = "an ensemble" if isinstance(card, EnsembleCard) else "a chain"
        raise SeparatorError(f"{card.name} is {kind}: load it with load_separator({card.name!r})")
    if path is None and not card.weights:
        raise SeparatorError(f"{card.where}: a config needs its checkpoint; pass `checkpoint`")
    msst = msst_source(model, card) if model_type is None and path is not None else None
    return load_card(card, path, device=device, offline=offline, msst=msst)


# --- converting and importing --------------------------------------------------------------------
def convert_checkpoint(
    checkpoint: str | Path,
    config: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    model_type: str | None = None,
) -> tuple[Path, Path]:
    """Convert a checkpoint to `output` (.safetensors) plus a card beside it (.yaml).

    The checkpoint is first loaded with `strict=True` into the model the config describes.
    """
    from separator.zoo.cards import save_card, weights_entry
    from separator.zoo.formats import save_state_dict

    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix != ".safetensors":
        output = output.with_suffix(".safetensors")
    card_path = output.with_suffix(".yaml")
    for p in (output, card_path):
        if p.exists() and not overwrite:
            raise CheckpointError(f"{p}: already exists (pass `force=True` to overwrite)")
    card = read_card(config, model_type=model_type)
    msst = msst_source(config, card) if model_type is None else None
    card, state = checkpoint_card(card, checkpoint, msst)
    model = build_model(card)
    load_weights(model, state, source=checkpoint, config=card.path)
    save_state_dict(model, output, metadata={"architecture": card.architecture})
    card = ModelCard(
        name=check_name(name or output.stem, "model name"),
        architecture=card.architecture,
        model=card.model,
        stems=card.stems,
        stem_names=card.stem_names,
        sample_rate=card.sample_rate,
        chunk_size=card.chunk_size,
        weights=weights_entry(output),
        license="unknown: see the checkpoint's source",
        source=f"converted from {checkpoint.name} with {Path(config).name}",
    )
    save_card(card, card_path)
    return output, card_path


def import_checkpoint(
    checkpoint: str | Path,
    config: str | Path,
    name: str,
    *,
    folder: Path,
    overwrite: bool = False,
    model_type: str | None = None,
) -> tuple[Path, Path]:
    """`convert_checkpoint` into a models folder under a name no other card uses."""
    check_name(name, "model name")
    existing = all_cards().get(name)
    if existing is not None and not (
        overwrite and existing.path and existing.path.parent == folder
    ):
        raise SeparatorError(f"model name {name!r} is already used by {existing.path}")
    return convert_checkpoint(
        checkpoint,
        config,
        folder / f"{name}.safetensors",
        name=name,
        overwrite=overwrite,
        model_type=model_type,
    )
