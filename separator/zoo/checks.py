"""Card checks that need more than the card's own text: which `model:` field a constructor error
is about, and whether the model can run a chunk of the card's `chunk_size`.

A card's mistakes should surface when it is loaded, as one line naming the card and the field,
not as a torch traceback in the middle of the first file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from separator.errors import ConfigError

# Chunks up to this many samples are test-run once at load. Spectrogram models need more than
# n_fft / 2 samples (reflect padding), a few thousand at most, while the chunks they were trained
# on are far longer (8 s = 352800 samples), so a real card costs nothing here.
PROBE_LIMIT = 1 << 14


def culprit_field(model: Mapping[str, Any], message: str) -> str | None:
    """The one `model:` key whose (string) value a constructor's error message quotes, if any.

    Constructors say "invalid literal for int() with base 10: 'sixty-four'" without the field's
    name; the card's keys tell which field held that value.
    """
    hits = [k for k, v in model.items() if isinstance(v, str) and repr(v) in message]
    return hits[0] if len(hits) == 1 else None


def check_chunk_size(model: nn.Module, where: str) -> None:
    """Raise `ConfigError` naming `chunk_size` and the minimum if `model` cannot run a chunk of
    `model.chunk_size` samples. Short chunks only (see `PROBE_LIMIT`); one zero chunk is run."""
    chunk = int(model.chunk_size)
    if chunk > PROBE_LIMIT or _error_at(model, chunk) is None:
        return
    if _error_at(model, PROBE_LIMIT) is not None:  # not a matter of length
        first = _error_at(model, chunk)
        raise ConfigError(f"{where}: the model fails on a chunk of {chunk} samples ({first})")
    lo, hi = chunk, PROBE_LIMIT  # fails at lo, runs at hi: bisect for the shortest that runs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _error_at(model, mid) is not None else (lo, mid)
    raise ConfigError(
        f"{where}: `chunk_size` {chunk} (MSST: audio.chunk_size) is shorter than this model's "
        f"minimum of {hi} samples"
    )


def _error_at(model: nn.Module, length: int) -> str | None:
    """None if the model runs a (1, channels, length) chunk of zeros, else the error's 1st line."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, int(model.audio_channels), length, device=device)
    try:
        with torch.inference_mode():
            model(x)
    except (RuntimeError, ValueError, IndexError) as e:  # what torch raises for a short input
        return (str(e).splitlines() or [type(e).__name__])[0]
    return None
