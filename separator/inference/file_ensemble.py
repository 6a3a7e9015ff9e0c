"""Combine stems that are already separated (several models' `vocals.wav`) into one file, as MSST's
`ensemble.py --files a.wav b.wav --type avg_wave --weights 2 1` does, streaming in blocks.

    ensemble_files(["a/vocals.wav", "b/vocals.wav"], "vocals.wav", method="max_fft")

The inputs must share their sample rate and channel count; a shorter one is padded with silence
to the longest (as audio-separator's ensembler does). The output is written to a temporary file
and renamed, and an existing file is kept unless `force=True`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from separator.errors import ConfigError, SeparatorError
from separator.inference.audio import AudioSource, open_audio
from separator.inference.combine import WAVE_METHODS, SpecCombiner, combine_waves
from separator.inference.pipeline import pop_samples
from separator.inference.writers import StemWriter
from separator.zoo.cards import canonical_method, check_ensemble

OUTPUT_FORMATS = {".wav": "wav", ".flac": "flac"}


def ensemble_files(
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    method: str = "avg",
    weights: Sequence[float] | None = None,
    bits: int | None = None,
    clip: str | None = None,
    force: bool = False,
) -> Path:
    """Write the combination of `paths` (one stem each) to `output` (.wav or .flac); return it.

    `method`: one of ENSEMBLE_METHODS (MSST's names `avg_wave`/`median_wave` work too);
    `weights`: one per file (`avg` and `avg_fft` only). `bits`: 32 (float, the default for WAV,
    as MSST writes) or 16/24 (the default for FLAC); `clip`: "none" for float output, else
    "rescale", unless given.
    """
    output = Path(output)
    method = canonical_method(method)
    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise SeparatorError(f"{output}: the output must be a .wav or .flac file")
    try:
        check_ensemble([str(p) for p in paths], weights, method, "ensemble")
    except ConfigError as e:
        raise SeparatorError(str(e)) from None
    if output.exists() and not force:
        raise SeparatorError(f"{output}: already exists (pass `force=True` to overwrite)")
    sources = _open_matching([Path(p) for p in paths])
    bits = bits or (32 if fmt == "wav" else 24)
    clip = clip or ("none" if bits == 32 else "rescale")
    first = sources[0]
    writer = StemWriter(output, first.sample_rate, first.channels, fmt=fmt, bits=bits, clip=clip)
    try:
        _stream(sources, method, list(weights or [1.0] * len(sources)), writer.write)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _open_matching(paths: list[Path]) -> list[AudioSource]:
    """Open every input; they must agree on sample rate and channel count."""
    sources = [open_audio(p) for p in paths]
    first = sources[0]
    for src in sources[1:]:
        if src.sample_rate != first.sample_rate:
            raise SeparatorError(
                f"{src.path}: {src.sample_rate} Hz, but {first.path} is {first.sample_rate} Hz; "
                "ensemble files of one sample rate"
            )
        if src.channels != first.channels:
            raise SeparatorError(
                f"{src.path}: {src.channels} channel(s), but {first.path} has {first.channels}"
            )
    return sources


def _stream(sources: list[AudioSource], method: str, weights: list[float], sink) -> None:
    """Read all inputs block by block, combine what every one has delivered, hand it to `sink`.
    An input that ends early is padded with zeros until the longest one ends."""
    channels = sources[0].channels
    blocks = [src.blocks() for src in sources]
    queues: list[deque[np.ndarray]] = [deque() for _ in sources]
    ready, done = [0] * len(sources), [False] * len(sources)
    spec = None if method in WAVE_METHODS else SpecCombiner(method, channels, weights)
    while not all(done):
        for k, it in enumerate(blocks):
            if done[k] or ready[k] > min(ready):
                continue  # read the ones that are behind: memory stays about one block each
            block = next(it, None)
            if block is None:
                done[k] = True
            else:
                queues[k].append(block)
                ready[k] += len(block)
        longest = max(ready)
        n = longest if all(done) else min(r for r, d in zip(ready, done) if not d)
        for k in range(len(sources)):  # the ended ones: silence up to what the others have
            if done[k] and ready[k] < n:
                queues[k].append(np.zeros((n - ready[k], channels), np.float32))
                ready[k] = n
        n = min(ready)
        x = np.stack([pop_samples(q, n, channels) for q in queues])
        ready = [r - n for r in ready]
        last = all(done)
        if spec is not None:
            sink(spec.push(x, last=last))
        elif n:
            sink(combine_waves(method, x, weights))
