"""Chains: models run one after another, each on one stem of the previous model's output.

    separate song.wav --model "kim:vocals > dereverb:noreverb > karaoke"

mixture ─▶ step 1 ─▶ vocals ─▶ step 2 ─▶ noreverb ─▶ step 3 ─▶ vocals, instrumental

Every step streams (its own rate, chunk and overlap), fed block by block with the finished samples
of the stem it takes, so memory stays constant whatever the length: only each step's chunks in
flight and the samples one step has finished before the others live at once.

Outputs are named by their path through the chain: the stems taken so far, then the stem, joined
with "-". With the chain above: `vocals` and `instrumental` (step 1; instrumental = mixture minus
vocals), `vocals-noreverb` and `vocals-no_noreverb` (step 2; the latter = its input minus
noreverb: the reverb), `vocals-noreverb-vocals` and `vocals-noreverb-instrumental` (step 3, and
its residuals `vocals-noreverb-no_vocals`, ...). By default a chain writes the last step's stems.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence

import numpy as np

from separator.errors import SeparatorError
from separator.inference.pipeline import PipelineBase, pop_samples
from separator.inference.separator import SeparatorBase
from separator.inference.stems import StemPlan, available_stems, resolve_stems

SEP = "-"  # joins the stems of a path through the chain: vocals-noreverb-vocals


class Chain(SeparatorBase):
    """`steps[k]` separates stem `taken[k]` of step k-1's output (step 0: the mixture).

    `taken` has one stem per step but the last; each must be one of the previous step's
    `available_stems` (model stems or residuals such as `instrumental`).
    """

    def __init__(
        self,
        steps: Sequence[SeparatorBase],
        taken: Sequence[str],
        names: Sequence[str] | None = None,
    ) -> None:
        if len(steps) < 2 or len(taken) != len(steps) - 1:
            raise SeparatorError("a chain needs two or more steps and a stem between each two")
        self.steps, self.taken = list(steps), list(taken)
        self.names = list(names or [f"step{i}" for i in range(len(steps))])
        for k, stem in enumerate(self.taken):
            if stem not in self.steps[k].available_stems:
                raise SeparatorError(
                    f"chain: {self.names[k]} has no stem {stem!r} to pass on; it has "
                    f"{', '.join(self.steps[k].available_stems)}"
                )
        # (output name, step, that step's own stem name) for every output the chain can make
        self.outputs: list[tuple[str, int, str]] = []
        for k, step in enumerate(self.steps):
            prefix = SEP.join(self.taken[:k])
            for stem in step.available_stems:
                self.outputs.append((f"{prefix}{SEP}{stem}" if prefix else stem, k, stem))

    @property
    def stems(self) -> tuple[str, ...]:
        """Every output, named by its path (the last step's model stems are the default ones)."""
        return tuple(name for name, _, _ in self.outputs)

    def _plans(self, stems: str | Sequence[str] | None, residual: str = "minus") -> list[StemPlan]:
        if stems is None:
            last = len(self.steps) - 1
            stems = [n for n, k, s in self.outputs if k == last and s in self.steps[last].stems]
        return resolve_stems(self.stems, stems, residual=residual)

    @property
    def available_stems(self) -> list[str]:
        return available_stems(self.stems)

    def _pipeline(self, in_rate, in_channels, plans: list[StemPlan], where: str, rewind=None):
        return _ChainPipeline(self, in_rate, in_channels, plans, where, rewind)


class _ChainPipeline(PipelineBase):
    """Same interface as `ModelPipeline`: push mixture blocks, get the requested outputs."""

    def __init__(
        self, chain: Chain, in_rate: int, in_channels: int, plans, where: str, rewind=None
    ) -> None:
        super().__init__(plans, in_channels)
        self.chain = chain
        wanted = [chain.outputs[i] for i in self.needed]  # (name, step, local stem)
        depth = max(k for _, k, _ in wanted)  # later steps are not run at all
        self.pipes = []
        for k in range(depth + 1):
            local = [s for _, j, s in wanted if j == k]
            if k < depth:
                local.append(chain.taken[k])
            local = list(dict.fromkeys(local))
            plans_k = resolve_stems(chain.steps[k].stems, local)
            again = step_input(chain, k, in_rate, in_channels, where, rewind)
            self.pipes.append(chain.steps[k]._pipeline(in_rate, in_channels, plans_k, where, again))
        # finished samples of each needed output, waiting for the slowest output to catch up
        self.queues = {i: deque() for i in self.needed}
        self.ready = {i: 0 for i in self.needed}
        self.local = {i: (chain.outputs[i][1], chain.outputs[i][2]) for i in self.needed}

    def push(self, block: np.ndarray) -> dict[str, np.ndarray]:
        self._take_input(block)
        self._run(block, last=False)
        return self._emit()

    def flush(self) -> dict[str, np.ndarray]:
        self._run(None, last=True)
        return self._emit()

    def _run(self, block: np.ndarray | None, *, last: bool) -> None:
        for k, out in push_through(self.pipes, self.chain.taken, block, last=last):
            self._collect(k, out)

    def _collect(self, k: int, out: dict[str, np.ndarray]) -> None:
        for i, (step, stem) in self.local.items():
            if step == k and stem in out and len(out[stem]):
                self.queues[i].append(out[stem])
                self.ready[i] += len(out[stem])

    def _emit(self) -> dict[str, np.ndarray]:
        m = min(self.ready.values())
        for i in self.ready:
            self.ready[i] -= m
        parts = {i: pop_samples(self.queues[i], m, self.in_channels) for i in self.needed}
        self.n_out += m
        return self._assemble(lambda i: parts[i], m)

    def queued(self) -> int:
        """Samples finished by some output but waiting for the slowest one (bounded: latency)."""
        return max(self.ready.values(), default=0)


def step_input(chain: Chain, k: int, in_rate: int, in_channels: int, where: str, rewind=None):
    """A rewind of step k's input: the mixture's `rewind` for step 0; for a later step, the
    mixture run anew through steps 0..k-1, block by block (None without a mixture rewind).

    A step that needs a first pass over its input (demucs's mixture statistics) reads it from
    here, so such a model can be any step of a chain: the steps before it then run twice, and
    memory stays constant. Yields (n, in_channels) blocks at `in_rate`, as the pipelines do.
    """
    if k == 0 or rewind is None:
        return rewind

    def blocks():
        pipes = []
        for j in range(k):
            plans = resolve_stems(chain.steps[j].stems, [chain.taken[j]])
            again = step_input(chain, j, in_rate, in_channels, where, rewind)
            pipes.append(chain.steps[j]._pipeline(in_rate, in_channels, plans, where, again))
        for block in itertools.chain(rewind(), [None]):  # None: the end, flush every step
            *_, (_, out) = push_through(pipes, chain.taken, block, last=block is None)
            x = out.get(chain.taken[k - 1])
            if x is not None and len(x):
                yield x

    return blocks


def push_through(pipes, taken: Sequence[str], block: np.ndarray | None, *, last: bool):
    """Push `block` (None: nothing more) through the step pipelines in order, each getting stem
    `taken[k]` of what the one before finished, flushing each when `last`. Yields (k, output of
    step k): {stem: (n, channels)} blocks."""
    x = block
    for k, pipe in enumerate(pipes):
        out = pipe.push(x) if x is not None and len(x) else {}
        if last:
            tail = pipe.flush()
            out = {s: np.concatenate([out[s], tail[s]]) if s in out else tail[s] for s in tail}
        yield k, out
        if k + 1 < len(pipes):
            x = out.get(taken[k])
