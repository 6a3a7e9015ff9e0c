"""Audio in: block reading (soundfile, ffmpeg fallback), whole-file reading, resampling.
Writing is `separator.inference.writers`.

Blocks are numpy float32 arrays shaped (frames, channels), the layout soundfile and soxr use;
the engine's side converts them to (channels, frames) tensors. `read_audio` returns
(channels, frames), the project's layout for whole signals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from separator.errors import SeparatorError

BLOCK_FRAMES = 65536
SOUNDFILE_FORMATS = "WAV, FLAC, OGG, MP3"


@dataclass
class AudioSource:
    """An opened audio file: its format facts and a block iterator (see `blocks`)."""

    path: Path
    sample_rate: int
    channels: int
    frames: int | None  # None when the decoder cannot tell in advance (some ffmpeg inputs)
    _sf: sf.SoundFile | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate

    def blocks(self, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """Yield (n, channels) float32 blocks; raise `SeparatorError` on NaN/inf or no samples."""
        raw = (
            self._sf_blocks(block_frames)
            if self._sf is not None
            else _ffmpeg_blocks(self.path, self.channels, block_frames)
        )
        total = 0
        for block in raw:
            if not np.isfinite(block).all():
                at = total + int(np.argwhere(~np.isfinite(block))[0, 0])
                raise SeparatorError(
                    f"{self.path}: contains NaN or infinite samples "
                    f"(first at {at / self.sample_rate:.3f} s)"
                )
            total += len(block)
            yield block
        if total == 0:
            raise SeparatorError(f"{self.path}: zero-length audio (no samples to separate)")

    def _sf_blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        assert self._sf is not None
        with self._sf as f:
            while True:
                try:
                    block = f.read(block_frames, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise SeparatorError(f"{self.path}: corrupt audio ({e})") from None
                if len(block) == 0:
                    return
                yield block


def open_audio(path: str | os.PathLike) -> AudioSource:
    """Open `path` for block reading: soundfile first, then ffmpeg for other formats.

    Raises `SeparatorError` for a missing file, a zero-length file, or audio neither can decode.
    """
    path = Path(path)
    if not path.exists():
        raise SeparatorError(f"{path}: no such file")
    if path.is_dir():
        raise SeparatorError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise SeparatorError(f"{path}: empty file (zero-length audio)")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        return _open_with_ffmpeg(path, soundfile_error=str(e))
    frames = f.frames if f.frames > 0 else None
    if f.frames == 0:
        f.close()
        raise SeparatorError(f"{path}: zero-length audio (no samples to separate)")
    _warn_if_truncated(path, f)
    return AudioSource(path, f.samplerate, f.channels, frames, f)


class TruncatedAudioWarning(UserWarning):
    """A file holds fewer samples than its header announces (cut off mid-file)."""


# libsndfile logs "data : <header bytes> (should be <bytes present>)" for a short data chunk.
_SHORT_DATA = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Lengths that writers to a pipe leave in the header (ffmpeg: 0xFFFFFFFF): unknown, not wrong.
_UNKNOWN_LENGTH = 0x7FFFF000


def _warn_if_truncated(path: Path, f: sf.SoundFile) -> None:
    """Warn when the header's data length exceeds the data present; libsndfile reads what is
    there (its frame count is the present one), so the file still separates, only shorter."""
    found = _SHORT_DATA.search(f.extra_info)
    if found is None or f.frames <= 0:
        return
    announced, present = int(found.group(1)), int(found.group(2))
    if announced <= present or announced >= _UNKNOWN_LENGTH:
        return
    per_frame = max(1, present // f.frames)
    header_frames, rate = announced // per_frame, f.samplerate
    warnings.warn(
        f"{path}: truncated: the header announces {header_frames} frames "
        f"({header_frames / rate:.2f} s) but the file holds {f.frames} ({f.frames / rate:.2f} s); "
        "reading the samples that are there",
        TruncatedAudioWarning,
        stacklevel=3,
    )


def read_audio(path: str | os.PathLike, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """(channels, frames) float32 samples of a whole file or an excerpt, and the sample rate.

    Reads through `open_audio` (soundfile, else ffmpeg), so every reader of the package accepts
    the same formats and reports the same errors.
    """
    source = open_audio(path)
    if source._sf is not None and (start or frames >= 0):
        with source._sf as f:
            f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), source.sample_rate
    data = np.concatenate(list(source.blocks()))
    end = None if frames < 0 else start + frames
    return np.ascontiguousarray(data[start:end].T), source.sample_rate


def audio_info(path: str | os.PathLike) -> tuple[int, int | None]:
    """(sample rate, frames or None) of an audio file, without decoding it."""
    source = open_audio(path)
    if source._sf is not None:
        source._sf.close()
    return source.sample_rate, source.frames


def _open_with_ffmpeg(path: Path, soundfile_error: str) -> AudioSource:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise SeparatorError(
            f"{path}: cannot read this audio ({soundfile_error.strip()}); soundfile reads "
            f"{SOUNDFILE_FORMATS}, install ffmpeg for other formats"
        )
    cmd = [
        "ffprobe",
        "-v",
        "error",
        "-select_streams",
        "a:0",
        "-show_entries",
        "stream=sample_rate,channels,duration",
        "-of",
        "json",
        str(path),
    ]
    probe = subprocess.run(cmd, check=False, capture_output=True, text=True)
    streams = json.loads(probe.stdout or "{}").get("streams", []) if probe.returncode == 0 else []
    if not streams:
        raise SeparatorError(
            f"{path}: unreadable or corrupt audio (neither soundfile nor ffmpeg can decode it)"
        )
    info = streams[0]
    rate, channels = int(info["sample_rate"]), int(info["channels"])
    duration = info.get("duration")
    frames = round(float(duration) * rate) if duration not in (None, "N/A") else None
    return AudioSource(path, rate, channels, frames)


def _ffmpeg_blocks(path: Path, channels: int, block_frames: int) -> Iterator[np.ndarray]:
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-",
    ]
    # stderr goes to a file so that a chatty decoder cannot fill the pipe and stall us.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        bytes_per_block = block_frames * channels * 4
        try:
            while data := proc.stdout.read(bytes_per_block):
                usable = len(data) - len(data) % (channels * 4)
                yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
        finally:
            proc.stdout.close()
            code = proc.wait() if proc.poll() is None else proc.returncode
        if code != 0:
            err.seek(0)
            last = (err.read().decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise SeparatorError(f"{path}: unreadable or corrupt audio (ffmpeg: {last})")


class Resampler:
    """Streaming soxr resampler over (n, channels) float32 blocks; a no-op at equal rates."""

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        self.passthrough = in_rate == out_rate
        if not self.passthrough:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, channels, dtype="float32", quality="HQ"
            )

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return block
        return self._stream.resample_chunk(np.ascontiguousarray(block), last=last)


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole (n, channels) array, the same way the streaming path does."""
    r = Resampler(in_rate, out_rate, x.shape[1])
    if r.passthrough:
        return x
    return np.concatenate([r(x), r(x[:0], last=True)])
