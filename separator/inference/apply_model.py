"""demucs's `apply_model` as a streaming engine: the same chunks, weights and sums, in constant
memory. The pipeline a card selects with `pipeline: {engine: apply_model}` (`zoo.pipeline`).

What demucs.apply.apply_model (4.1.0) computes for one model on T samples, with shifts=0:
- segment L = int(samplerate · segment) samples and stride = int((1 − overlap) · L); chunks start
  at 0, stride, 2·stride, … while the start is < T; chunk k is mix[off : off + L], so the last
  ones are shorter;
- a chunk of n samples is run at `apply_length(model, n)` = V samples: it is widened around its
  centre with the mix's own neighbouring samples (V−n)//2 before and the rest after, zeros only
  past the ends of the mix, and the output is centre-trimmed back to n;
- weights: the triangle [1, 2, …, L//2, L − L//2, …, 2, 1] / its max, to `transition_power`; a
  chunk of n samples takes the first n values (the last chunk's ramp is not re-centred);
- out = Σ weight · output / Σ weight, summed in chunk order.
Shifts (shifts > 0): for each offset o in [0, max_shift], max_shift = int(samplerate / 2), the
same on (max_shift − o) zeros followed by the mix, the output read from max_shift − o; the
shifts are averaged. demucs draws o from Python's global `random` (which HTDemucs's forward also
draws from); ours come from a seeded generator, or are given. A bag runs each member so (offsets
drawn member after member), multiplies source k of member m by weights[m][k], sums, and divides
source k by Σ_m weights[m][k].

Streaming: a chunk runs as soon as the input reaches its end plus its right context (at the end
of the input, the rest run with zeros past it), in order; samples before the next chunk's start
are final and returned at once. Each (member, shift) keeps one `ApplyStream` with at most about
two segments of input and one of output, whatever the track's length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from separator.errors import SeparatorError
from separator.inference.finite import model_name, non_finite_error, precision_name
from separator.nn.demucs import DemucsBag, HTDemucs, apply_length

DEFAULT_APPLY_OVERLAP = 0.25  # demucs's --overlap


@dataclass(frozen=True)
class ChunkPlan:
    """How apply_model cuts a track for one model: segment L, stride, weight (L,) float32."""

    model: nn.Module
    length: int
    stride: int
    weight: Tensor
    segment: Any  # the explicit `segment` argument (None: the model's own)

    def run_length(self, n: int) -> int:
        """Samples a chunk of n samples is run at."""
        return apply_length(self.model, n, self.segment)

    def context(self, n: int) -> tuple[int, int]:
        """(samples before, samples after) a chunk of n samples is widened with."""
        delta = self.run_length(n) - n
        return delta // 2, delta - delta // 2


def chunk_plan(
    model: nn.Module, overlap: float, transition_power: float, segment: Any = None
) -> ChunkPlan:
    """The plan of one (non-bag) demucs model; `segment` in seconds overrides model.segment."""
    seconds = segment if segment is not None else model.segment
    length = int(model.samplerate * seconds)
    stride = int((1 - overlap) * length)
    if length < 1 or stride < 1:
        raise SeparatorError(
            f"`segment` {seconds} s with `overlap` {overlap} leaves no step between chunks"
        )
    # demucs's arithmetic: int64 aranges, true division to float32, then the power
    weight = torch.cat(
        [torch.arange(1, length // 2 + 1), torch.arange(length - length // 2, 0, -1)]
    )
    weight = (weight / weight.max()) ** transition_power
    return ChunkPlan(model, length, stride, weight, segment)


class ApplyStream:
    """apply_model(shifts=0) of one model over one stream of (channels, n) blocks.

    `lead` zeros are put before the input and their output dropped (one shift). push/flush
    return the finished (sources, channels, m) output, m >= 0; together exactly the input's
    length.
    """

    def __init__(
        self,
        plan: ChunkPlan,
        *,
        channels: int,
        sources: int,
        lead: int = 0,
        batch_size: int = 1,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        self.plan, self.channels, self.sources = plan, channels, sources
        self.name = name or model_name(plan.model)  # how errors name the model
        self.batch_size, self.device, self.autocast_dtype = batch_size, device, autocast_dtype
        self._full_run = plan.run_length(plan.length)
        self._left, self._right = plan.context(plan.length)
        self._keep = plan.length + self._left  # input kept before the next chunk's start
        self._in = torch.zeros(channels, 0)
        self._in_pos = 0  # stream position of _in[:, 0]
        self._total = 0  # samples received, lead included
        self._next = 0  # start of the next chunk to run
        self._acc = torch.zeros(sources, channels, 0)
        self._wsum = torch.zeros(0)
        self._acc_pos = 0  # stream position of _acc[..., 0]
        self._skip = lead
        self._done = False
        if lead:
            self._append(torch.zeros(channels, lead))

    def push(self, block: Tensor) -> Tensor:
        if self._done:
            raise RuntimeError("push() after flush()")
        self._append(block.detach().float().cpu())
        length, stride = self.plan.length, self.plan.stride
        while True:  # run full batches of chunks whose input and right context have arrived
            starts = [self._next + k * stride for k in range(self.batch_size)]
            if starts[-1] + length + self._right > self._total:
                break
            self._run([(off, length) for off in starts])
        return self._emit(self._next)

    def flush(self) -> Tensor:
        if self._done:
            raise RuntimeError("flush() called twice")
        self._done = True
        total, length = self._total, self.plan.length
        starts = range(self._next, total, self.plan.stride)
        full = [(off, length) for off in starts if off + length <= total]
        for k in range(0, len(full), self.batch_size):
            self._run(full[k : k + self.batch_size])
        for off in starts:
            if off + length > total:  # the short last chunks, each at its own length
                self._run([(off, total - off)])
        return self._emit(total)

    def _append(self, block: Tensor) -> None:
        drop = max(0, self._next - self._keep - self._in_pos)
        self._in = torch.cat([self._in[:, drop:], block], dim=1)
        self._in_pos += drop
        self._total += block.shape[1]

    def _window(self, start: int, size: int) -> Tensor:
        """Input [start, start + size) of the stream, zeros before 0 and after the end."""
        if max(start, 0) < self._in_pos:
            raise RuntimeError("apply_model stream: the context left the input buffer")
        out = torch.zeros(self.channels, size)
        lo, hi = max(start, self._in_pos), min(start + size, self._in_pos + self._in.shape[1])
        if hi > lo:
            out[:, lo - start : hi - start] = self._in[:, lo - self._in_pos : hi - self._in_pos]
        return out

    def _run(self, chunks: list[tuple[int, int]]) -> None:
        """Run chunks of one length as a batch and add their weighted outputs, in order."""
        n = chunks[0][1]
        run = self._full_run if n == self.plan.length else self.plan.run_length(n)
        left = (run - n) // 2
        x = torch.stack([self._window(off - left, run) for off, _ in chunks])
        with torch.inference_mode(), self._autocast():
            y = self.plan.model(x.to(self.device))
        if y.shape != (len(chunks), self.sources, self.channels, run):
            raise SeparatorError(
                f"model returned shape {tuple(y.shape)} for input {tuple(x.shape)}"
            )
        y = y.to("cpu", torch.float32)[..., left : left + n]
        self._check_finite(y, chunks)
        for (off, _), out in zip(chunks, y):
            self._add(off, n, out)
        self._next = chunks[-1][0] + self.plan.stride

    def _check_finite(self, y: Tensor, chunks: list[tuple[int, int]]) -> None:
        """Refuse NaN/inf output (see `StreamingEngine._check_finite`), naming where the first
        bad chunk starts in the input (the shift's lead of zeros taken off)."""
        if bool(torch.isfinite(y).all()):  # one pass per batch: the cheap common case
            return
        k = int((~torch.isfinite(y)).flatten(1).any(1).nonzero()[0, 0])
        seconds = max(0, chunks[k][0] - self._skip) / float(self.plan.model.samplerate)
        precision = precision_name(self.plan.model, self.autocast_dtype)
        raise non_finite_error(self.name, precision, seconds)

    def _add(self, off: int, n: int, out: Tensor) -> None:
        end = off + n - self._acc_pos
        if end > self._acc.shape[-1]:
            grow = end - self._acc.shape[-1]
            self._acc = torch.cat([self._acc, self._acc.new_zeros(*self._acc.shape[:2], grow)], -1)
            self._wsum = torch.cat([self._wsum, self._wsum.new_zeros(grow)])
        weight = self.plan.weight[:n]
        lo = off - self._acc_pos
        self._acc[..., lo : lo + n] += weight * out
        self._wsum[lo : lo + n] += weight

    def _emit(self, upto: int) -> Tensor:
        """The normalised output before stream position `upto`, the lead dropped."""
        upto = min(upto, self._acc_pos + self._acc.shape[-1])
        k = max(0, upto - self._acc_pos)
        out = self._acc[..., :k] / self._wsum[:k]
        self._acc, self._wsum = self._acc[..., k:], self._wsum[k:]
        start, self._acc_pos = self._acc_pos, self._acc_pos + k
        skip = min(k, max(0, self._skip - start))
        return out[..., skip:]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


class ApplyModelEngine:
    """`apply_model(model, mix, shifts, split=True, overlap, transition_power, segment)` of a
    demucs model or bag, streaming: same `push`/`flush` as `StreamingEngine`.

    `offsets`: the shift offsets, one list per member (or one flat list, member after member);
    otherwise drawn in [0, max_shift] from numpy's generator seeded with `seed`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        overlap: float = DEFAULT_APPLY_OVERLAP,
        transition_power: float = 1.0,
        shifts: int = 0,
        segment: Any = None,
        offsets: Sequence[int] | Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        batch_size: int = 1,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        check_settings(model, overlap, transition_power, shifts, segment, batch_size)
        bag = isinstance(model, DemucsBag)
        self.members = list(model.models) if bag else [model]
        self.weights = [list(w) for w in model.weights] if bag else None
        self.shifts, self.n_sources = shifts, len(model.sources)
        self.channels = int(model.audio_channels)
        self.max_shift = int(0.5 * model.samplerate)
        self.offsets = shift_offsets(len(self.members), shifts, self.max_shift, offsets, seed)
        device = torch.device(device) if device is not None else _device(model)
        settings = dict(channels=self.channels, sources=self.n_sources, batch_size=batch_size,
                        device=device, autocast_dtype=autocast_dtype,
                        name=model_name(model))  # fmt: skip
        self.streams = [
            [
                ApplyStream(plan, lead=self.max_shift - o if shifts else 0, **settings)
                for o in (offs if shifts else [0])
            ]
            for plan, offs in zip(
                (chunk_plan(m, overlap, transition_power, segment) for m in self.members),
                self.offsets,
            )
        ]
        self._pending = [[[] for _ in member] for member in self.streams]
        self._ready = [[0 for _ in member] for member in self.streams]

    def push(self, block: Tensor) -> Tensor:
        """(channels, n) input -> the finished (sources, channels, m) output."""
        if block.dim() != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected ({self.channels}, n) samples, got {tuple(block.shape)}")
        return self._step(lambda stream: stream.push(block))

    def flush(self) -> Tensor:
        """End of input: the rest of the output."""
        return self._step(lambda stream: stream.flush())

    def _step(self, call) -> Tensor:
        for m, member in enumerate(self.streams):
            for s, stream in enumerate(member):
                out = call(stream)
                self._pending[m][s].append(out)
                self._ready[m][s] += out.shape[-1]
        n = min(min(r) for r in self._ready)
        parts = [[self._take(m, s, n) for s in range(len(member))]
                 for m, member in enumerate(self.streams)]  # fmt: skip
        return self._combine(parts)

    def _take(self, m: int, s: int, n: int) -> Tensor:
        queue = self._pending[m][s]
        joined = torch.cat(queue, dim=-1) if len(queue) > 1 else queue[0]
        self._pending[m][s] = [joined[..., n:]]
        self._ready[m][s] -= n
        return joined[..., :n]

    def _combine(self, parts: list[list[Tensor]]) -> Tensor:
        """Shifts averaged per member, then the bag's per-source weighted mean, in demucs's
        order of operations (demucs/apply.py)."""
        estimate: Tensor | None = None
        for m, shifted in enumerate(parts):
            out = shifted[0]
            if self.shifts:
                out = out.clone()
                for other in shifted[1:]:
                    out += other
                out /= self.shifts
            if self.weights is None:
                return out
            out = out.clone()
            for k, weight in enumerate(self.weights[m]):
                out[k] *= weight
            estimate = out if estimate is None else estimate + out
        assert estimate is not None
        for k in range(self.n_sources):
            estimate[k] /= sum(w[k] for w in self.weights)
        return estimate


def check_settings(
    model: nn.Module, overlap: float, power: float, shifts: int, segment: Any, batch_size: int
) -> None:
    """SeparatorErrors for settings apply_model refuses, named as the API's arguments."""
    if not 0 <= overlap < 1:
        raise SeparatorError(f"`overlap` for apply_model must be in [0, 1), got {overlap}")
    if power < 1:
        raise SeparatorError(f"`transition_power` must be >= 1, got {power}")
    if not isinstance(shifts, int) or shifts < 0:
        raise SeparatorError(f"`shifts` must be an integer >= 0, got {shifts!r}")
    if batch_size < 1:
        raise SeparatorError(f"batch_size must be >= 1, got {batch_size}")
    if segment is None:
        return
    members = model.models if isinstance(model, DemucsBag) else [model]
    limit = min((m.segment for m in members if isinstance(m, HTDemucs)), default=None)
    if not segment > 0 or (limit is not None and segment > limit):
        raise SeparatorError(
            f"`segment` {segment} s: a transformer model runs at most the {float(limit):g} s "
            "it was trained on"
            if limit is not None and segment > 0
            else f"`segment` must be > 0 seconds, got {segment}"
        )


def shift_offsets(
    members: int, shifts: int, max_shift: int, offsets: Any, seed: int
) -> list[list[int]]:
    """One list of `shifts` offsets in [0, max_shift] per member (given, or seeded draws)."""
    if not shifts:
        return [[] for _ in range(members)]
    if offsets is None:
        draws = np.random.default_rng(seed).integers(0, max_shift, size=members * shifts,
                                                     endpoint=True)  # fmt: skip
        offsets = [int(o) for o in draws]
    flat = [list(o) for o in offsets] if offsets and isinstance(offsets[0], Sequence) else None
    if flat is None:
        values = [int(o) for o in offsets]
        flat = [values[m * shifts : (m + 1) * shifts] for m in range(members)]
    if len(flat) != members or any(len(o) != shifts for o in flat):
        raise SeparatorError(f"`offsets`: expected {shifts} per model for {members} model(s)")
    if any(not 0 <= o <= max_shift for offs in flat for o in offs):
        raise SeparatorError(f"`offsets` must lie in [0, {max_shift}]")
    return flat


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def separate_apply(model: nn.Module, mix: Tensor, **settings) -> Tensor:
    """apply_model on a whole (channels, time) tensor: (sources, channels, time) float32."""
    engine = ApplyModelEngine(model, **settings)
    return torch.cat([engine.push(mix), engine.flush()], dim=-1)


def apply_engine(
    model: nn.Module,
    spec: Any,
    *,
    overlap: float | None = None,
    shifts: int | None = None,
    segment: Any = None,
    chunk_size: int | None = None,
    **settings,
) -> ApplyModelEngine:
    """The engine a model with `spec` (its `zoo.pipeline.PipelineSpec`) runs in, the caller's
    settings over the card's. `overlap` below 1 is apply_model's fraction; from 1 up it counts
    model evaluations per sample as for the overlap-add engine (the fraction 1 − 1/overlap).
    `chunk_size` in samples is a segment of chunk_size / sample_rate seconds."""
    if chunk_size is not None:
        if segment is not None:
            raise SeparatorError("give `segment` or `chunk_size`, not both")
        segment = Fraction(int(chunk_size), int(model.samplerate))
    if overlap is None:
        overlap = spec.overlap
    elif overlap >= 1:
        overlap = 1 - 1 / overlap
    return ApplyModelEngine(
        model,
        overlap=overlap,
        transition_power=spec.transition_power,
        shifts=spec.shifts if shifts is None else shifts,
        segment=segment,
        **settings,
    )
