"""Real recorded stems for the evaluation tests: the example track that `stempeg` ships.

"The Easton Ellises - Falcon 69.stem.mp4", 6.08 s at 44.1 kHz, stereo AAC; decoded with ffmpeg.
Tests that use it skip cleanly where stempeg or ffmpeg is missing.
"""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest

# Order of the streams in a MUSDB18 .stem.mp4 (musdb 0.4 setup: mixture first).
STEM_ORDER = ("mixture", "drums", "bass", "other", "vocals")
MUSDB_STEMS = ("vocals", "drums", "bass", "other")


@functools.lru_cache(maxsize=1)
def _decode() -> tuple[np.ndarray, int]:
    import stempeg

    audio, rate = stempeg.read_stems(stempeg.example_stem_path())
    return np.ascontiguousarray(audio.transpose(0, 2, 1)), int(rate)  # (5, channels, time)


def example_stems() -> tuple[dict[str, np.ndarray], int]:
    """{name: (channels, time) float64} for mixture, drums, bass, other, vocals, and the rate."""
    pytest.importorskip("stempeg")
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("ffmpeg is not installed")
    audio, rate = _decode()
    return {name: audio[i] for i, name in enumerate(STEM_ORDER)}, rate


def import_museval():
    """museval, or a skip: importing it pulls in musdb and stempeg, which need ffmpeg."""
    try:
        import museval
    except Exception as e:
        pytest.skip(f"museval unavailable: {e}")
    return museval
