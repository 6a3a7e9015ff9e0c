"""Block pipelines: input-rate mixture blocks in, finished input-rate stems out.

A pipeline turns the mixture into the model's channels and rate, streams it through one engine
per model stream, brings the needed stems back to the input's rate and channels, and builds the
residual stems (`instrumental`, `no_<stem>`) from a delayed copy of the mixture. Ensembles run one
pipeline per member (`separator.inference.ensemble`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from separator.errors import SeparatorError
from separator.inference.audio import Resampler
from separator.inference.engine import NonFiniteOutputError, SeparationModel, StreamingEngine
from separator.inference.stems import StemPlan

Progress = Callable[[int, int | None], None]  # (input frames done, total frames or None)


def pop_samples(queue: deque[np.ndarray], n: int, channels: int) -> np.ndarray:
    """Remove and return the first `n` samples of a queue of (m, C) blocks."""
    parts, need = [], n
    while need > 0:
        head = queue[0]
        take = min(need, len(head))
        parts.append(head[:take])
        if take == len(head):
            queue.popleft()
        else:
            queue[0] = head[take:]
        need -= take
    return np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)


class PipelineBase:
    """What every pipeline shares: a delayed copy of the mixture for the residual stems, the
    assembly of the requested outputs, and the loop over input blocks. Subclasses give `push`,
    `flush` and keep `n_in` / `n_out` (input samples taken / output samples released)."""

    def __init__(self, plans: list[StemPlan], in_channels: int) -> None:
        self.plans, self.in_channels = plans, in_channels
        self.needed = sorted({i for p in plans for i in p.uses})  # model stems the plans use
        self.mix: deque[np.ndarray] = deque()  # input blocks not yet matched by output
        self.n_in = 0
        self.n_out = 0

    def _take_input(self, block: np.ndarray) -> None:
        self.mix.append(block)
        self.n_in += len(block)

    def _assemble(self, stem: Callable[[int], np.ndarray], m: int) -> dict[str, np.ndarray]:
        """{plan name: (m, Cin)} from `stem(model stem index)`, residuals from the mixture."""
        mix = pop_samples(self.mix, m, self.in_channels)
        out = {}
        for plan in self.plans:
            if plan.index is not None:
                out[plan.name] = np.ascontiguousarray(stem(plan.index))
            elif plan.adds:
                out[plan.name] = sum(stem(i) for i in plan.adds).astype(np.float32)
            else:
                rest = sum(stem(i) for i in plan.minus)
                out[plan.name] = (mix - rest).astype(np.float32)
        return out

    def push(self, block: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def flush(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run(
        self,
        blocks: Iterator[np.ndarray],
        sink: Callable[[dict[str, np.ndarray]], None],
        total: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Drive the pipeline over all `blocks`, handing each output dict to `sink`."""
        for block in blocks:
            sink(self.push(block))
            if progress is not None:
                progress(self.n_out, total)
        sink(self.flush())
        if progress is not None:
            progress(self.n_out, self.n_out)


class ModelPipeline(PipelineBase):
    """Block pipeline from input-rate mixture blocks to input-rate output stems.

    mixture (n, Cin) ─▶ model channels ─▶ resample to model rate ─▶ engine(s) ─▶ needed stems in
    the input's channel layout ─▶ resample back ─▶ residuals from a delayed copy of the mixture.
    A mono model on stereo input runs one engine per channel, so stereo stays stereo.
    """

    def __init__(
        self,
        model: SeparationModel,
        new_engine: Callable[[], StreamingEngine],
        in_rate: int,
        in_channels: int,
        plans: list[StemPlan],
        where: str,
    ) -> None:
        model_ch = model.audio_channels
        if in_channels not in (1, 2):
            raise SeparatorError(
                f"{where}: {in_channels} channels; separate takes mono or stereo "
                "audio (downmix first, e.g. ffmpeg -i in -ac 2 out.wav)"
            )
        if model_ch not in (1, 2):
            raise SeparatorError(f"model has {model_ch} audio channels; only 1 or 2 are supported")
        super().__init__(plans, in_channels)
        self.where = where
        self.split = model_ch == 1 and in_channels == 2  # one engine per input channel
        self.engines = [new_engine() for _ in range(2 if self.split else 1)]
        self.duplicate = model_ch == 2 and in_channels == 1
        rate = model.sample_rate
        self.down = Resampler(in_rate, rate, 1 if self.split else model_ch)
        self.downs = [self.down] + ([Resampler(in_rate, rate, 1)] if self.split else [])
        self.up = Resampler(rate, in_rate, len(self.needed) * in_channels)

    def push(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """(n, Cin) float32 mixture -> {stem: (m, Cin)} finished output (m may be 0)."""
        self._take_input(block)
        return self._step(block, last=False)

    def flush(self) -> dict[str, np.ndarray]:
        """End of input: the remaining output, padded or trimmed to the input's exact length."""
        return self._step(np.zeros((0, self.in_channels), np.float32), last=True)

    def _step(self, block: np.ndarray, *, last: bool) -> dict[str, np.ndarray]:
        if self.split:
            parts = [
                self._run_engine(e, r, block[:, c : c + 1], last)
                for c, (e, r) in enumerate(zip(self.engines, self.downs))
            ]
            y = torch.cat(parts, dim=1)  # (K, 2, m): one channel from each engine
        else:
            x = np.repeat(block, 2, axis=1) if self.duplicate else block
            y = self._run_engine(self.engines[0], self.down, x, last)
            if self.duplicate:
                y = y.mean(dim=1, keepdim=True)  # mono in, mono out
        k, c, m = y.shape
        flat = y.permute(2, 0, 1).reshape(m, k * c).numpy()
        out = self.up(flat, last=last)
        if last:
            missing = self.n_in - self.n_out - len(out)
            if missing > 0:  # resampler rounding: at most a sample or two short
                out = np.concatenate([out, np.zeros((missing, out.shape[1]), np.float32)])
        out = out[: self.n_in - self.n_out]
        self.n_out += len(out)
        stems = out.reshape(len(out), k, c)  # (m, K needed stems, Cin)
        return self._assemble(lambda i: stems[:, self.needed.index(i)], len(stems))

    def _run_engine(
        self, engine: StreamingEngine, down: Resampler, x: np.ndarray, last: bool
    ) -> Tensor:
        """(n, C) input-rate samples -> (K needed stems, C, m) model-rate output, finished."""
        xm = down(x, last=last)
        try:
            y = engine.push(torch.from_numpy(np.ascontiguousarray(xm.T)))
            if last:
                y = torch.cat([y, engine.flush()], dim=-1)
        except NonFiniteOutputError as e:
            if self.where == "tensor":
                raise
            raise NonFiniteOutputError(f"{self.where}: {e}", e.seconds) from None
        return y[self.needed]
