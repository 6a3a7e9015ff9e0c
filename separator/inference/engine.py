"""Chunked overlap-add inference engine, streaming in constant memory.

The engine knows only the model protocol (`SeparationModel`): `forward((B, C, T)) -> (B, S, C, T)`
plus `sample_rate`, `stems`, `audio_channels` and `chunk_size`. Everything about STFTs, bands and
masks stays inside the model.

Layout of one stream, in *padded* coordinates (samples at the model's rate):

    [ left pad P = chunk - step | real samples (L) | right pad up to the last chunk's end ]
    chunk k covers [k * step, k * step + chunk)

With the left pad equal to `chunk - step` and a chunk starting at every multiple of `step` up to
the last real sample, every real sample is covered by exactly the chunks whose start lies in
`(p - chunk, p]`, the same set of window offsets as in the middle of a long track. So the summed
window at a real sample depends only on `p mod step` and is a fixed periodic table: borders and
the last partial chunk are treated exactly like the interior.

Samples before the next chunk's start can no longer change once a batch is added, so `push`
returns them at once; the engine holds one accumulator of `chunk + (batch - 1) * step` samples
per stem, however long the track.
"""

from __future__ import annotations

import contextlib
import math
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from separator.errors import SeparatorError
from separator.inference.finite import (  # noqa: F401  (NonFiniteOutputError: re-exported)
    NonFiniteOutputError,
    model_name,
    non_finite_error,
    precision_name,
)
from separator.inference.inputs import as_waveform

DEFAULT_OVERLAP = 2.0
DEFAULT_BATCH_SIZE = 1
FADE = 0.05  # the window's fades, as a share of the chunk (make_window)


@runtime_checkable
class SeparationModel(Protocol):
    """What the engine needs from a model (any `nn.Module` with these attributes)."""

    sample_rate: int
    stems: tuple[str, ...]
    audio_channels: int
    chunk_size: int

    def __call__(self, x: Tensor) -> Tensor: ...  # (B, C, T) -> (B, S, C, T)


def check_model(model: nn.Module) -> None:
    """Raise `SeparatorError` if `model` lacks an attribute of the engine's protocol."""
    missing = [
        a for a in ("sample_rate", "stems", "audio_channels", "chunk_size") if not hasattr(model, a)
    ]
    if missing:
        raise SeparatorError(
            f"model {type(model).__name__} lacks {', '.join(missing)}; the engine needs "
            "sample_rate, stems, audio_channels and chunk_size"
        )


def chunk_step(chunk_size: int, overlap: float) -> int:
    """Hop between chunk starts in samples: about `overlap` model evaluations per sample."""
    if not (isinstance(overlap, (int, float)) and math.isfinite(overlap) and overlap >= 1):
        raise SeparatorError(
            f"overlap must be a number >= 1 (evaluations per sample), got {overlap}"
        )
    if chunk_size < 1:
        raise SeparatorError(f"chunk_size must be >= 1 sample, got {chunk_size}")
    return max(1, min(chunk_size, round(chunk_size / overlap)))


def make_window(chunk_size: int, step: int) -> Tensor:
    """Overlap-add weight of one chunk: flat, with short linear fades at both ends.

    Shape (chunk_size,), float32, strictly positive. The fades span
    `min(chunk - step, round(FADE * chunk))` samples, so overlapping chunks are averaged with
    equal weight except near each chunk's edge, and overlap 1 gives a rectangle. Equal averaging
    measured better than leaning on the chunk where a sample sits near the centre (the Hann
    window of overlap 2 before issue 19: 0.08 dB below MSST's `num_overlap=4`, this window
    within 0.02 dB at the same cost; benchmarks/README.md, "Speed (issue 19)"). Sample centres
    at `(i + 0.5) / fade` keep the window away from zero, so normalisation never divides by zero
    even for a sample that only one chunk covers.
    """
    fade = min(chunk_size - step, round(FADE * chunk_size))
    window = torch.ones(chunk_size, dtype=torch.float64)
    if fade > 0:
        ramp = (torch.arange(fade, dtype=torch.float64) + 0.5) / fade
        window[:fade] = ramp
        window[chunk_size - fade :] = ramp.flip(0)
    return window.float()


def window_norm(window: Tensor, step: int) -> Tensor:
    """Summed window at a covered sample as a function of `p mod step`: shape (step,)."""
    chunk_size = window.shape[0]
    n_terms = -(-chunk_size // step)
    padded = torch.zeros(n_terms * step, dtype=torch.float64)
    padded[:chunk_size] = window.double()
    return padded.view(n_terms, step).sum(0).float()


def evaluations_per_sample(chunk_size: int, overlap: float) -> float:
    """Average number of model evaluations that cover one sample (the cost of an overlap)."""
    return chunk_size / chunk_step(chunk_size, overlap)


class StreamingEngine:
    """Overlap-add separation of an input that arrives in blocks.

    `push(block)` takes (channels, n) float32 samples at the model's rate and returns the finished
    output (stems, channels, m); `flush()` ends the stream and returns the rest. The concatenated
    outputs have exactly the input's length. Chunks form batches in order, a batch running as soon
    as `batch_size` chunks are complete, so how the input is cut into blocks never changes what
    the model sees: block-wise output equals whole-tensor output bit for bit.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        overlap: float = DEFAULT_OVERLAP,
        batch_size: int = DEFAULT_BATCH_SIZE,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        check_model(model)
        if batch_size < 1:
            raise SeparatorError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.chunk = int(chunk_size if chunk_size is not None else model.chunk_size)
        self.step = chunk_step(self.chunk, overlap)
        self.batch_size = batch_size
        self.channels = int(model.audio_channels)
        self.n_stems = len(model.stems)
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.autocast_dtype = autocast_dtype
        self.window = make_window(self.chunk, self.step)  # read-only from here on
        self._norm = window_norm(self.window, self.step)
        self.pad_left = self.chunk - self.step
        # Buffers are allocated once and reused: fresh large tensors per block cost page faults
        # that took more time than a small model. Input not yet consumed by a chunk is
        # `_in[:, _in_off:_in_off + _in_len]`, starting at padded position `_in_pos`; it begins
        # with the left pad (zeros).
        self._in = torch.zeros(self.channels, 4 * self.chunk)
        self._in_off, self._in_len, self._in_pos = 0, self.pad_left, 0
        self._pending = 0  # complete chunks waiting for a full batch
        self._batch = torch.empty(batch_size, self.channels, self.chunk)
        # Accumulator from padded position `_acc_pos`, and a spare to slide into.
        acc_len = self.chunk + (batch_size - 1) * self.step
        self._acc = torch.zeros(self.n_stems, self.channels, acc_len)
        self._acc_spare = torch.zeros_like(self._acc)
        self._acc_pos = 0
        # Summed window, tiled so that the normaliser of [lo, hi) is one slice.
        self._norm_tile = self._norm.repeat(acc_len // self.step + 2)
        self._emitted = self.pad_left  # padded position of the next sample to return
        self._real_len = 0
        self._done = False
        self.evaluations = 0  # chunks run so far

    def push(self, block: Tensor) -> Tensor:
        """Add (channels, n) input samples; return the finished (stems, channels, m) output."""
        if self._done:
            raise RuntimeError("push() after flush()")
        if block.dim() != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected ({self.channels}, n) samples, got {tuple(block.shape)}")
        self._real_len += block.shape[1]
        self._append(block.detach())
        return self._take_chunks(final=False)

    def flush(self) -> Tensor:
        """End of input: run the remaining chunks and return the last (stems, channels, m)."""
        if self._done:
            raise RuntimeError("flush() called twice")
        self._done = True
        last_start = self.step * ((self.pad_left + self._real_len - 1) // self.step)
        if self._real_len == 0:
            last_start = -1  # nothing to separate
        tail = last_start + self.chunk - (self._in_pos + self._in_len)
        if tail > 0:  # right pad so that the last chunk is whole
            self._append(torch.zeros(self.channels, tail))
        return self._take_chunks(final=True, last_start=last_start)

    def _append(self, block: Tensor) -> None:
        """Copy (channels, n) samples after the unconsumed input, compacting or growing."""
        n, have = block.shape[1], self._in_len
        if self._in_off + have + n > self._in.shape[1]:
            valid = self._in[:, self._in_off : self._in_off + have]
            if have + n > self._in.shape[1] // 2:
                grown = torch.zeros(self.channels, have + n + 2 * self.chunk)
                grown[:, :have] = valid
                self._in = grown
            elif self._in_off >= have:  # source and destination do not overlap
                self._in[:, :have] = valid
            else:
                self._in[:, :have] = valid.clone()
            self._in_off = 0
        end = self._in_off + have
        self._in[:, end : end + n] = block
        self._in_len += n

    def _take_chunks(self, *, final: bool, last_start: int = -1) -> Tensor:
        outs = []
        while True:
            rel = self._pending * self.step
            start = self._in_pos + rel
            if rel + self.chunk > self._in_len or (final and start > last_start):
                break
            self._pending += 1
            if self._pending == self.batch_size:
                outs.append(self._run_batch())
        if final and self._pending:
            outs.append(self._run_batch())
        if final:
            outs.append(self._emit(self._pad_end()))
        if not outs:
            return self._acc.new_zeros(self.n_stems, self.channels, 0)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def _pad_end(self) -> int:
        return self.pad_left + self._real_len

    def _run_batch(self) -> Tensor:
        """Run the pending chunks as one batch, add them up, return the finished samples."""
        n, first = self._pending, self._in_pos
        for k in range(n):
            lo = self._in_off + k * self.step
            self._batch[k] = self._in[:, lo : lo + self.chunk]
        batch = self._batch[:n].to(self.device, non_blocking=True)
        # Drop input no later chunk needs: everything before the next chunk's start.
        self._pending = 0
        self._in_off += n * self.step
        self._in_len -= n * self.step
        self._in_pos = next_start = first + n * self.step
        with torch.inference_mode(), self._autocast():
            y = self.model(batch)
        if y.shape != (n, self.n_stems, self.channels, self.chunk):
            raise SeparatorError(
                f"model returned shape {tuple(y.shape)}, expected "
                f"{(n, self.n_stems, self.channels, self.chunk)}"
            )
        y = y.to("cpu", torch.float32)
        self._check_finite(y, first)
        self.evaluations += n
        for k in range(n):
            off = first + k * self.step - self._acc_pos
            self._acc[..., off : off + self.chunk].addcmul_(y[k], self.window)
        out = self._emit(min(next_start, self._pad_end()))
        self._slide(next_start)
        return out

    def _check_finite(self, y: Tensor, first: int) -> None:
        """Refuse NaN/inf output of the batch whose first chunk starts at padded `first`: written
        out it would become a full-scale DC stem (integer formats) or NaNs (float)."""
        if bool(torch.isfinite(y).all()):  # one pass per batch: the cheap common case
            return
        k = int((~torch.isfinite(y)).flatten(1).any(1).nonzero()[0, 0])
        start = max(0, first + k * self.step - self.pad_left)  # the input's samples at model rate
        seconds = start / float(self.model.sample_rate)
        raise non_finite_error(model_name(self.model), self.precision, seconds)

    @property
    def precision(self) -> str:
        """ "fp32", "bf16" or "fp16": the autocast dtype, else the model's parameter dtype."""
        return precision_name(self.model, self.autocast_dtype)

    def _emit(self, upto: int) -> Tensor:
        """Return the normalised samples in [emitted, upto): (stems, channels, m)."""
        lo, hi = self._emitted, max(upto, self._emitted)
        phase = lo % self.step
        out = self._acc[..., lo - self._acc_pos : hi - self._acc_pos]
        out = out / self._norm_tile[phase : phase + hi - lo]
        self._emitted = hi
        return out

    def _slide(self, new_pos: int) -> None:
        """Move the accumulator's origin to `new_pos` (the next chunk start)."""
        shift = new_pos - self._acc_pos
        keep = self._acc.shape[-1] - shift
        self._acc_spare[..., :keep] = self._acc[..., shift:]
        self._acc_spare[..., keep:] = 0
        self._acc, self._acc_spare = self._acc_spare, self._acc
        self._acc_pos = new_pos

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def separate_tensor(
    model: nn.Module,
    mix: Tensor | np.ndarray,
    *,
    overlap: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    **apply_settings,
) -> Tensor:
    """Separate a whole (channels, time) waveform at the model's rate.

    `mix`: a torch tensor or numpy array; integer PCM is scaled to [-1, 1) as soundfile reads it
    (`separator.inference.inputs.as_waveform`). Returns (stems, channels, time) float32 on the
    CPU. Same code path as streaming: the whole tensor is pushed as a single block. A model with
    demucs's pipeline (`model.pipeline`) runs in the apply_model engine and equals demucs's
    `apply_model` (`apply_settings`: shifts, segment, offsets, seed; see
    `inference.apply_model.apply_engine`).
    """
    mix = as_waveform(mix, "mix")
    if mix.dim() != 2:
        raise SeparatorError(f"expected a (channels, time) tensor, got shape {tuple(mix.shape)}")
    spec = getattr(model, "pipeline", None)
    if spec is not None and spec.apply_model:
        from separator.inference.apply_model import apply_engine

        engine = apply_engine(model, spec, overlap=overlap, chunk_size=chunk_size,
                              batch_size=batch_size, autocast_dtype=autocast_dtype,
                              **apply_settings)  # fmt: skip
        return torch.cat([engine.push(mix), engine.flush()], dim=-1)
    if apply_settings:
        raise SeparatorError(f"{', '.join(apply_settings)}: only for the apply_model pipeline")
    engine = StreamingEngine(
        model,
        overlap=overlap if overlap is not None else DEFAULT_OVERLAP,
        batch_size=batch_size,
        chunk_size=chunk_size,
        autocast_dtype=autocast_dtype,
    )
    return torch.cat([engine.push(mix), engine.flush()], dim=-1)


class TTAModel(nn.Module):
    """Test-time augmentation around any protocol model, as MSST's `--use_tta` does.

    Runs the input as is, with left/right swapped (stereo models only) and with its polarity
    inverted, undoes each augmentation on the output and averages: 3 (or 2) evaluations per chunk,
    all in one batch. (B, C, T) -> (B, S, C, T); exposes the wrapped model's protocol attributes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_model(model)
        self.model = model
        self.sample_rate, self.stems = model.sample_rate, tuple(model.stems)
        self.audio_channels, self.chunk_size = model.audio_channels, model.chunk_size
        self.model_name = model_name(model)

    def forward(self, x: Tensor) -> Tensor:
        swap = self.audio_channels == 2
        views = [x, -x] + ([x.flip(1)] if swap else [])
        y = self.model(torch.cat(views, dim=0)).chunk(len(views), dim=0)
        total = y[0] - y[1]
        if swap:
            total = total + y[2].flip(2)  # (B, S, C, T): channels are dim 2
        return total / len(views)
