"""Checkpoint formats: weights in and out, never executing what a file holds.

One reader per format a family can name (`Family.checkpoint_format`):
- "state_dict": MSST/UVR checkpoints (.ckpt/.pth/.pt, any wrapper, DDP prefixes) read with
  `torch.load(weights_only=True)`, and safetensors. A checkpoint that needs arbitrary pickled
  objects is refused, never run.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from separator.errors import CheckpointError
from separator.files import atomic_write

_WRAPPERS = ("state", "state_dict", "model_state_dict", "model")


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
        sd = torch_load(path)
    return _unwrap(sd, path)


def torch_load(path: Path, allow: list | None = None) -> Any:
    """`torch.load(weights_only=True)`, with `allow` as extra safe globals (inert stand-ins).

    Errors are one-line CheckpointErrors naming the file: a pickle that needs other globals is
    refused, and a file that is no checkpoint at all says so.
    """
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the checkpoint needs arbitrary pickled Python objects{what}, "
            "which could run code; only weights are loaded. Re-save its state_dict from a "
            "trusted environment, or convert it to safetensors"
        ) from None
    except Exception as e:  # torch raises many types for files that are not checkpoints
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None


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


# Format name -> reader of a weights file into a state dict.
READERS: dict[str, Callable[[Path], dict[str, Tensor]]] = {
    "state_dict": load_state_dict,
}


def read_weights(path: Path, checkpoint_format: str) -> dict[str, Tensor]:
    """The state dict in `path`, read by the reader of `checkpoint_format`."""
    try:
        reader = READERS[checkpoint_format]
    except KeyError:
        raise CheckpointError(
            f"{path}: no reader for checkpoint format {checkpoint_format!r}"
        ) from None
    return reader(path)
