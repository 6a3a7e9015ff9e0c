"""State dicts and configs in and out: MSST/UVR checkpoints, safetensors, YAML configs and cards.

Checkpoints are read with `torch.load(weights_only=True)` or safetensors: a checkpoint that needs
arbitrary pickled objects is refused, never executed. YAML is read with a safe loader that also
accepts `!!python/tuple` (MSST writes `freqs_per_bands` that way).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from separator.audio import use_umask
from separator.cards import ModelCard, check_name, is_card, save_card
from separator.errors import CheckpointError, ConfigError
from separator.zoo import weights_entry

_WRAPPERS = ("state", "state_dict", "model_state_dict", "model")


# --- YAML ------------------------------------------------------------------------------------
class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader plus `!!python/tuple`; every other Python tag stays an error."""


def _tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", _tuple)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely. Errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str = "config") -> dict[str, Any]:
    """Parse YAML text into a mapping (safe loader plus `!!python/tuple`). Errors name `where`."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}: not a valid config YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a YAML mapping at the top level")
    return data


# --- state dicts -----------------------------------------------------------------------------
def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from .ckpt/.pth/.pt (weights only) or .safetensors.

    Unwraps `state`, `state_dict`, `model_state_dict` (and `model`) and strips a DDP `module.`
    prefix. Raises CheckpointError naming the file on anything unsafe or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        sd = _torch_load(path)
    return _unwrap(sd, path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the checkpoint needs arbitrary pickled Python objects{what}, "
            "which could run code; only weights are loaded. Re-save its state_dict from a "
            "trusted environment, or convert it to safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})"
        ) from None


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    for _ in range(3):  # wrappers can nest ({"state": {"state_dict": ...}})
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: no state dict found (expected a mapping of tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found in the checkpoint")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def save_state_dict(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save a model's state dict as safetensors, atomically.

    Tied tensors (the rotary `freqs` shared by all layers of an axis) are stored once per key, as
    in MSST checkpoints, so the file loads with `strict=True` into MSST's classes too.
    """
    from safetensors.torch import save

    sd = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), save(sd, metadata=metadata))


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        use_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- configs -> models -------------------------------------------------------------------------
def detect_architecture(model_cfg: Mapping[str, Any]) -> str:
    """Tell BS from Mel: `num_bands` means Mel-Band RoFormer, otherwise BS-RoFormer."""
    if "num_bands" in model_cfg and "freqs_per_bands" in model_cfg:
        raise ConfigError("model config has both num_bands (Mel) and freqs_per_bands (BS)")
    return "mel_band_roformer" if "num_bands" in model_cfg else "bs_roformer"


def card_from_msst(
    data: Mapping[str, Any], path: Path | None = None, name: str | None = None
) -> ModelCard:
    """Turn an MSST YAML (`audio:`, `model:`, `training:`) into a ModelCard."""
    where = f"{path}: " if path else ""
    model = data.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError(f"{where}no `model:` section")
    audio = data.get("audio") or {}
    training = data.get("training") or {}
    num_stems = int(model.get("num_stems", 1))
    target = training.get("target_instrument")
    instruments = list(training.get("instruments") or [])
    if target:
        if num_stems != 1:
            raise ConfigError(
                f"{where}training.target_instrument is set but model.num_stems={num_stems}"
            )
        stems = [target]
    elif instruments:
        if len(instruments) != num_stems:
            raise ConfigError(
                f"{where}training.instruments lists {len(instruments)} stems but model.num_stems="
                f"{num_stems}; set training.target_instrument for a one-stem model"
            )
        stems = instruments
    else:
        stems = [f"stem{i}" for i in range(num_stems)]
    sample_rate = int(audio.get("sample_rate", model.get("sample_rate", 44100)))
    stem_name = name or (path.stem if path else "model")
    return ModelCard(
        name=re.sub(r"[^A-Za-z0-9_.+-]", "_", stem_name),
        architecture=detect_architecture(model),
        model=dict(model),
        stems=tuple(str(s) for s in stems),
        sample_rate=sample_rate,
        chunk_size=int(audio.get("chunk_size", 8 * sample_rate)),
        path=path,
    )


def read_card(config: str | Path | Mapping[str, Any]) -> ModelCard:
    """A ModelCard from a card YAML, an MSST YAML, or an already-parsed mapping of either."""
    path = None
    if not isinstance(config, Mapping):
        path = Path(config)
        config = read_yaml(path)
    if is_card(config):
        return ModelCard.from_dict(dict(config), path=path)
    return card_from_msst(config, path)


def build_model(card: ModelCard) -> nn.Module:
    """Construct (untrained) the model a card describes, with its engine attributes set."""
    from separator.nn import get_family

    try:
        return get_family(card.architecture).build(
            dict(card.model),
            sample_rate=card.sample_rate,
            stems=card.stems,
            chunk_size=card.chunk_size,
        )
    except ConfigError as e:
        raise ConfigError(f"{card.path or card.name}: {e}") from None


def load_model(
    config: str | Path | Mapping[str, Any] | ModelCard,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build a model from an MSST YAML or a card and load its weights with `strict=True`.

    checkpoint: .ckpt/.pth/.pt/.safetensors; defaults to the card's local weights file.
    Returns the model in eval mode on `device`, with `sample_rate`, `stems`, `audio_channels` and
    `chunk_size` set.
    """
    card = config if isinstance(config, ModelCard) else read_card(config)
    if checkpoint is None:
        checkpoint = card.weights_path
        if checkpoint is None:
            raise ConfigError(
                f"{card.path or card.name}: no checkpoint given and the card names none"
            )
    model = build_model(card)
    load_weights(model, load_state_dict(checkpoint), source=Path(checkpoint), config=card.path)
    return model.to(device).eval()


# Which config fields shape which parameters (for mismatch messages).
_HINTS = (
    (r"^band_split\.", "freqs_per_bands/num_bands, stereo, stft_n_fft, dim"),
    (
        r"^mask_estimators\.\d+\.to_freqs\.\d+\.0\.",
        "mask_estimator_depth, mlp_expansion_factor, dim, freqs_per_bands/num_bands, stereo",
    ),
    (r"^mask_estimators\.", "num_stems (training.instruments / target_instrument)"),
    (r"^layers\.\d+\.\d+\.layers\.\d+\.0\.(to_qkv|to_out|to_gates|rotary)", "dim, heads, dim_head"),
    (
        r"^layers\.\d+\.\d+\.norm\.|^final_norm",
        "architecture (BS has final_norm; Mel has a norm per transformer)",
    ),
    (
        r"^layers\.",
        "depth, time_transformer_depth, freq_transformer_depth, linear_transformer_depth",
    ),
)


def load_weights(
    model: nn.Module, sd: Mapping[str, Tensor], *, source: Path, config: Path | None = None
) -> None:
    """`load_state_dict(strict=True)` with a readable error when checkpoint and config disagree."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            _mismatch_message(expected, sd, missing, unexpected, wrong, source, config)
        )
    model.load_state_dict(dict(sd), strict=True)


def _mismatch_message(expected, sd, missing, unexpected, wrong, source, config) -> str:
    parts = []
    if wrong:
        shown = ", ".join(
            f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:3]
        )
        parts.append(f"{len(wrong)} with other shapes ({shown})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    fields: list[str] = []
    count = {
        name: [
            len({k.split(".")[1] for k in keys if k.startswith(prefix)}) for keys in (sd, expected)
        ]
        for name, prefix in (("stems", "mask_estimators."), ("depth", "layers."))
    }
    if count["stems"][0] != count["stems"][1]:
        fields.append("num_stems (training.instruments / target_instrument)")
    if count["depth"][0] != count["depth"][1]:
        fields.append("depth")
    for key in (wrong + missing + unexpected)[:20]:
        for pattern, hint in _HINTS:
            if re.search(pattern, key):
                if hint not in fields:
                    fields.append(hint)
                break
    seen = f"; the checkpoint has {count['stems'][0]} stem(s) and depth {count['depth'][0]}"
    cfg = f" with config {config}" if config else ""
    return (
        f"{source}: checkpoint does not fit the model{cfg}: {'; '.join(parts)}. "
        f"Check model.{'; model.'.join(fields)}{seen}"
    )


def convert_checkpoint(
    checkpoint: str | Path,
    config: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Convert an MSST checkpoint to `output` (.safetensors) plus a card beside it (.yaml).

    The checkpoint is first loaded with `strict=True` into the model the config describes.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix != ".safetensors":
        output = output.with_suffix(".safetensors")
    card_path = output.with_suffix(".yaml")
    for p in (output, card_path):
        if p.exists() and not overwrite:
            raise CheckpointError(f"{p}: already exists (pass --force to overwrite)")
    card = read_card(config)
    model = load_model(card, checkpoint)
    save_state_dict(model, output, metadata={"architecture": card.architecture})
    card_name = check_name(name or output.stem, "model name")
    card = ModelCard(
        name=card_name,
        architecture=card.architecture,
        model=card.model,
        stems=card.stems,
        sample_rate=card.sample_rate,
        chunk_size=card.chunk_size,
        weights=weights_entry(output),
        license="unknown: see the checkpoint's source",
        source=f"converted from {checkpoint.name} with {Path(config).name}",
    )
    save_card(card, card_path)
    return output, card_path
