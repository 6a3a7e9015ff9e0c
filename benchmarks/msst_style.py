"""A whole-track overlap-add loop in the style of MSST's `demix` (the baseline we compare with).

Written from the documented behaviour of ZFTurbo's Music-Source-Separation-Training inference:
the whole track and two full-length accumulators (result, counter) live in memory; chunks start
every `chunk // num_overlap` samples; the track is reflect-padded by `chunk - step` when long
enough; each chunk is weighted by a flat window with linear fades of `chunk // 10` samples (no
fade-in on the first chunk, no fade-out on the last); the result is divided by the counter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def msst_window(chunk: int, fade: int, first: bool, last: bool) -> Tensor:
    """Flat weights with linear fades, except at the track's two ends: shape (chunk,)."""
    w = torch.ones(chunk)
    if not first:
        w[:fade] = torch.linspace(0, 1, fade)
    if not last:
        w[-fade:] = torch.linspace(1, 0, fade)
    return w


def msst_demix(model: nn.Module, mix: Tensor, num_overlap: int = 4, batch_size: int = 1
               ) -> tuple[Tensor, int]:  # fmt: skip
    """(channels, time) at the model's rate -> ((stems, channels, time), model evaluations)."""
    chunk = int(model.chunk_size)
    step = chunk // num_overlap
    border = chunk - step
    length = mix.shape[-1]
    x = mix
    if length > 2 * border and border > 0:
        x = nn.functional.pad(mix[None], (border, border), mode="reflect")[0]
    n_stems, total = len(model.stems), x.shape[-1]
    result = torch.zeros(n_stems, mix.shape[0], total)
    counter = torch.zeros(n_stems, mix.shape[0], total)
    starts = list(range(0, total, step))
    evaluations = 0
    with torch.inference_mode():
        for b in range(0, len(starts), batch_size):
            group = starts[b : b + batch_size]
            parts = [x[:, i : i + chunk] for i in group]
            lengths = [p.shape[-1] for p in parts]
            batch = torch.stack([nn.functional.pad(p, (0, chunk - p.shape[-1])) for p in parts])
            y = model(batch).float()
            evaluations += len(group)
            for i, n, out in zip(group, lengths, y):
                w = msst_window(chunk, chunk // 10, i == 0, i + step >= total)[:n]
                result[..., i : i + n] += out[..., :n] * w
                counter[..., i : i + n] += w
    est = result / counter.clamp_min(1e-10)
    if length > 2 * border and border > 0:
        est = est[..., border : border + length]
    return est, evaluations
