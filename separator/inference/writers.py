"""Writing stems: output formats, their encoders, and `StemWriter`.

| format | encoder                             | lossless | rates              | setting   |
|--------|-------------------------------------|----------|--------------------|-----------|
| wav    | soundfile                           | yes      | any                | 16/24/32  |
| flac   | soundfile                           | yes      | any                | 16/24     |
| mp3    | soundfile (libsndfile + LAME), CBR  | no       | 8-48 kHz           | kbps, 320 |
| ogg    | soundfile (Vorbis, VBR)             | no       | any                | kbps, 192 |
| opus   | soundfile (Ogg Opus)                | no       | 8/12/16/24/48 kHz  | kbps, 160 |
| m4a    | ffmpeg (AAC)                        | no       | 7.35-96 kHz        | kbps, 256 |

A format soundfile cannot write on this machine (an older libsndfile), or mp3 with a LAME
`preset`, goes through ffmpeg instead. Lengths: soundfile's MP3 (LAME info tag), Vorbis and Opus
(granule positions) decode to exactly the written length; AAC in .m4a starts exactly (its
priming is cut by the edit list) but decoders that ignore the end of the edit list (ffmpeg 5)
pad the end to a whole 1024-sample frame.

A `StemWriter` writes one stem to a hidden temporary beside its final path, optionally resampled
to another rate. Clipping needs no look-ahead (`clamp`) or the stem's peak (`rescale`), and
`normalize` the peak of every stem of a track, so those write a float32 temporary first and
encode it in a second pass (`finish(gain)`). The final rename is the caller's
(`separator.inference.outputs`), so that a track's stems appear all together.
"""

from __future__ import annotations

import contextlib
import inspect
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from separator.errors import SeparatorError
from separator.files import commit_temp, temp_beside
from separator.inference.audio import BLOCK_FRAMES, Resampler

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200,
             96000)  # fmt: skip
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)  # MPEG-1 layer 3
MP3_LOW_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)  # MPEG-2 / 2.5
# Nominal bitrates (kbps, 44.1 kHz stereo) of the Vorbis quality levels q0..q10 (libvorbis docs).
VORBIS_NOMINAL = (64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500)
CLIP_MODES = ("rescale", "clamp", "none")
DEFAULT_FORMAT, DEFAULT_BITS, DEFAULT_CLIP = "wav", 24, "rescale"
_SF_CODEC_OPTIONS = "compression_level" in inspect.signature(sf.SoundFile.__init__).parameters


@dataclass(frozen=True)
class Codec:
    """How one output format is written: soundfile's format/subtype, or ffmpeg's codec/muxer."""

    lossless: bool
    sf_format: str | None
    sf_subtype: str | None  # None: from `bits`
    ffmpeg: tuple[str, str] | None  # (codec, muxer)
    rates: tuple[int, ...] | None = None  # None: any rate
    bitrate: int | None = None  # default kbps of a lossy format


FORMATS = {
    "wav": Codec(True, "WAV", None, None),
    "flac": Codec(True, "FLAC", None, None),
    "mp3": Codec(False, "MP3", "MPEG_LAYER_III", ("libmp3lame", "mp3"), MP3_RATES, 320),
    "ogg": Codec(False, "OGG", "VORBIS", ("libvorbis", "ogg"), None, 192),
    "opus": Codec(False, "OGG", "OPUS", ("libopus", "ogg"), OPUS_RATES, 160),
    "m4a": Codec(False, None, None, ("aac", "ipod"), AAC_RATES, 256),
}
PCM_SUBTYPES = {
    ("wav", 16): "PCM_16",
    ("wav", 24): "PCM_24",
    ("wav", 32): "FLOAT",
    ("flac", 16): "PCM_16",
    ("flac", 24): "PCM_24",
}


def output_subtype(fmt: str, bits: int) -> str:
    """soundfile subtype of a lossless format at a bit depth; `SeparatorError` if unsupported."""
    try:
        return PCM_SUBTYPES[(fmt, bits)]
    except KeyError:
        ok = ", ".join(f"{f} {b}" for f, b in PCM_SUBTYPES)
        raise SeparatorError(f"cannot write {fmt} at {bits} bits; supported: {ok}") from None


@dataclass(frozen=True)
class OutputSpec:
    """What a stem file looks like: format, depth or bitrate, rate, clipping.

    `sample_rate`: None keeps the input's rate (a format with fixed rates takes the nearest one
    above it). `clip_level`: the level `clamp` limits to and `rescale` scales a louder stem down
    to. `preset`: LAME's algorithm quality for mp3 (2 best .. 7 fastest; needs ffmpeg).
    """

    fmt: str = DEFAULT_FORMAT
    bits: int = DEFAULT_BITS
    clip: str = DEFAULT_CLIP
    clip_level: float = 1.0
    bitrate: int | None = None
    sample_rate: int | None = None
    preset: int | None = None

    def __post_init__(self) -> None:
        codec = FORMATS.get(self.fmt)
        if codec is None:
            raise SeparatorError(f"unknown `fmt` {self.fmt!r}; use {', '.join(FORMATS)}")
        if self.clip not in CLIP_MODES:
            raise SeparatorError(f"unknown `clip` {self.clip!r}; use {', '.join(CLIP_MODES)}")
        if not 0 < self.clip_level <= 1:
            raise SeparatorError(f"`clip_level` must be in (0, 1], got {self.clip_level}")
        if codec.lossless:
            output_subtype(self.fmt, self.bits)
            if self.bitrate is not None:
                raise SeparatorError(f"`bitrate` applies to lossy formats, not {self.fmt}")
        if self.sample_rate is not None and not (
            isinstance(self.sample_rate, int) and self.sample_rate > 0
        ):
            raise SeparatorError(f"`sample_rate` must be a positive integer: {self.sample_rate}")
        if self.preset is not None and (self.fmt != "mp3" or self.preset not in range(2, 8)):
            raise SeparatorError(f"`preset` is an mp3 LAME quality 2..7, got {self.preset}")

    @property
    def codec(self) -> Codec:
        return FORMATS[self.fmt]

    @property
    def float_out(self) -> bool:
        """True if the file keeps samples beyond ±1 (32-bit float WAV)."""
        return self.fmt == "wav" and self.bits == 32

    def out_rate(self, in_rate: int) -> int:
        """The output's sample rate for an input at `in_rate`."""
        rates = self.codec.rates
        want = self.sample_rate or in_rate
        if rates is None or want in rates:
            return want
        if self.sample_rate is not None:
            ok = ", ".join(str(r) for r in rates)
            raise SeparatorError(f"{self.fmt} cannot be written at {want} Hz; use one of {ok}")
        return min((r for r in rates if r >= want), default=rates[-1])

    def kbps(self, rate: int, channels: int) -> int | None:
        """The checked bitrate of a lossy format at this rate (None for lossless)."""
        if self.codec.lossless:
            return None
        kbps = self.bitrate if self.bitrate is not None else self.codec.bitrate
        assert kbps is not None
        if self.fmt == "mp3":
            allowed = MP3_BITRATES if rate >= 32000 else MP3_LOW_BITRATES
            allowed = allowed if rate >= 16000 else tuple(b for b in allowed if b <= 64)
            if kbps not in allowed and self.bitrate is None:
                kbps = max(b for b in allowed if b <= kbps)
            ok = ", ".join(map(str, allowed))
            if kbps not in allowed:
                raise SeparatorError(f"`bitrate` {kbps}: mp3 at {rate} Hz takes {ok} kbps")
        lo, hi = {"ogg": (64, 500), "opus": (6 * channels, 256 * channels)}.get(self.fmt, (8, 512))
        if not lo <= kbps <= hi:
            raise SeparatorError(f"`bitrate` {kbps}: {self.fmt} takes {lo} to {hi} kbps")
        return kbps

    def use_ffmpeg(self) -> bool:
        """True if this format is written by ffmpeg here (see the module doc)."""
        codec = self.codec
        if codec.sf_format is None or self.preset is not None:
            return True
        if codec.lossless:
            return False
        have = codec.sf_format in sf.available_formats() and codec.sf_subtype in (
            sf.available_subtypes(codec.sf_format)
        )
        return not (have and _SF_CODEC_OPTIONS)


def check_spec(spec: OutputSpec, in_rate: int = 44100, channels: int = 2) -> None:
    """Raise `SeparatorError` now for settings that would fail at the first file."""
    rate = spec.out_rate(in_rate)
    spec.kbps(rate, channels)
    if spec.use_ffmpeg() and shutil.which("ffmpeg") is None:
        raise SeparatorError(
            f"writing {spec.fmt}{' with a preset' if spec.preset else ''} needs ffmpeg, "
            "which is not installed"
        )


# --- errors ------------------------------------------------------------------------------------
def write_error(path: Path, e: BaseException) -> SeparatorError:
    """A one-line error for an OS-level failure while writing `path` (disk full, read-only...)."""
    if isinstance(e, SeparatorError):
        return e
    if isinstance(e, sf.LibsndfileError):
        reason = _libsndfile_reason(e)
    elif isinstance(e, OSError):
        reason = e.strerror or str(e)
    else:
        reason = str(e) or type(e).__name__
    return SeparatorError(f"{path}: cannot write ({reason})")


def _libsndfile_reason(e: sf.LibsndfileError) -> str:
    # The exception carries only libsndfile's generic "System error."; the open file's own
    # sf_strerror holds the OS reason ("No space left on device"), attached by `_SfSink`.
    detail = getattr(e, "detail", None) or e.error_string
    return detail.replace("System error : ", "").rstrip(".")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn OS and libsndfile errors raised inside into `write_error(path, e)`."""
    try:
        yield
    except (OSError, sf.LibsndfileError, AssertionError) as e:
        raise write_error(path, e) from None


# --- sinks: where encoded samples go -------------------------------------------------------------
class _SfSink:
    """soundfile writer of (n, channels) float32 blocks."""

    def __init__(self, path: Path, rate: int, channels: int, fmt: str, subtype: str, **opts):
        self._file = sf.SoundFile(path, "w", rate, channels, subtype, format=fmt, **opts)

    def write(self, block: np.ndarray) -> None:
        try:
            self._file.write(block)
        except sf.LibsndfileError as e:
            e.detail = _sf_strerror(self._file)  # type: ignore[attr-defined]
            raise

    def close(self) -> None:
        self._file.close()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()


def _sf_strerror(f: sf.SoundFile) -> str | None:
    try:
        from soundfile import _ffi, _snd  # the per-file message that names the OS error

        return _ffi.string(_snd.sf_strerror(f._file)).decode(errors="replace")
    except Exception:  # a soundfile without these internals: fall back to the generic text
        return None


class _FfmpegSink:
    """ffmpeg encoding raw float32 from a pipe into `path`."""

    def __init__(self, path: Path, rate: int, channels: int, args: list[str]) -> None:
        cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(rate),
               "-ac", str(channels), "-i", "pipe:0", *args, str(path)]  # fmt: skip
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._err)

    def write(self, block: np.ndarray) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        except BrokenPipeError:
            self.close()  # raises ffmpeg's own reason
            raise

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        code = self.proc.wait()
        self._err.seek(0)
        lines = self._err.read().decode(errors="replace").strip().splitlines()
        self._err.close()
        if code != 0:
            raise SeparatorError(f"ffmpeg failed: {(lines or [f'exit code {code}'])[-1]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self._err.close()


def _ffmpeg_args(spec: OutputSpec, kbps: int | None) -> list[str]:
    codec, muxer = spec.codec.ffmpeg or ("flac", "flac")
    args = ["-c:a", codec]
    if kbps is not None:
        args += ["-b:a", f"{kbps}k"]
    if spec.preset is not None:
        args += ["-compression_level", str(spec.preset)]
    return [*args, "-f", muxer]


def _sf_options(fmt: str, kbps: int, rate: int, channels: int) -> dict:
    """libsndfile's compression level for a target bitrate (its mpeg_l3_encode.c and
    ogg_opus.c: MP3 CBR kbps = 320 - 288·level at 32-48 kHz, 160 - 152·level below; Opus
    bps = ((1 - level)·250000 + 6000)·channels; Vorbis quality = 1 - level)."""
    if fmt == "mp3":
        top, span = (320, 288) if rate >= 32000 else (160, 152)
        level = max(0.0, (top - kbps - 0.5) / span)  # the half keeps int() on `kbps`
        return {"compression_level": level, "bitrate_mode": "CONSTANT"}
    if fmt == "opus":
        return {"compression_level": 1 - (kbps * 1000 / channels - 6000) / 250000}
    quality = np.interp(kbps, VORBIS_NOMINAL, np.linspace(0, 1, len(VORBIS_NOMINAL)))
    return {"compression_level": float(1 - quality)}


def open_sink(path: Path, spec: OutputSpec, rate: int, channels: int, float_temp: bool):
    """A sink writing `path`: the final format, or a float32 temporary for a second pass."""
    if float_temp:  # RF64 lifts WAV's 4 GiB limit; plain WAV when it may become the output
        return _SfSink(path, rate, channels, "WAV" if spec.float_out else "RF64", "FLOAT")
    codec = spec.codec
    kbps = spec.kbps(rate, channels)
    if spec.use_ffmpeg():
        return _FfmpegSink(path, rate, channels, _ffmpeg_args(spec, kbps))
    subtype = codec.sf_subtype or output_subtype(spec.fmt, spec.bits)
    opts = _sf_options(spec.fmt, kbps, rate, channels) if kbps is not None else {}
    return _SfSink(path, rate, channels, codec.sf_format, subtype, **opts)


# --- one stem ------------------------------------------------------------------------------------
HOLD = 16  # resampled samples held back so the end can be cut to the exact length


class StemWriter:
    """Writes one stem to a hidden temporary next to `path` (see the module doc).

    `write((n, channels) float32 at sample_rate)`; `finish(gain)` ends the stream and leaves the
    finished file at `self.tmp` (a second pass applies `gain`, else the clip mode's own);
    `commit()` finishes and renames (a lone stem); `abort()` deletes everything it made.
    `clip`: "clamp" limits samples to ±clip_level; "rescale" divides the stem by peak/clip_level
    when the peak exceeds clip_level; "none" keeps float samples (other formats saturate at ±1).
    `cancel`: the batch's `Cancel`; temporaries are made under it and discarded by it.
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        channels: int,
        spec: OutputSpec | None = None,
        *,
        two_pass: bool | None = None,
        cancel=None,
        **kwargs,
    ) -> None:
        from separator.inference.cancel import Cancel

        self.spec = spec = spec if spec is not None else OutputSpec(**kwargs)
        self.path, self.in_rate, self.channels = Path(path), sample_rate, channels
        self.rate = spec.out_rate(sample_rate)
        self._resample = Resampler(sample_rate, self.rate, channels)
        self.n_in = self.n_out = 0
        self._held = np.zeros((0, channels), np.float32)
        self.peak = 0.0
        self._ended = False
        self.two_pass = spec.clip == "rescale" if two_pass is None else two_pass
        self.cancel = cancel if cancel is not None else Cancel()
        self.temps: list[Path] = []
        self._sinks: list = []
        # Folders made here are removed again by abort(), so a failure leaves nothing behind.
        self._made = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        with writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self._open(float_temp=self.two_pass)

    def _open(self, *, float_temp: bool) -> Path:
        with self.cancel.guarded(), writing(self.path):
            tmp = temp_beside(self.path)
            self.temps.append(tmp)
            self.cancel.track(self)
            self._sinks.append(open_sink(tmp, self.spec, self.rate, self.channels, float_temp))
        return tmp

    def write(self, block: np.ndarray) -> None:
        """Append (n, channels) float32 samples at the input rate."""
        self.cancel.check()
        self.n_in += len(block)
        if self._resample.passthrough:
            return self._emit(block)
        y = np.concatenate([self._held, self._resample(block)])
        self._held = y[len(y) - min(HOLD, len(y)) :]
        self._emit(y[: len(y) - len(self._held)])

    def _emit(self, y: np.ndarray) -> None:
        self.peak = max(self.peak, float(np.abs(y).max(initial=0.0)))
        self.n_out += len(y)
        if not self.two_pass:
            y = self._clip(y)
        with writing(self.path):
            self._sinks[-1].write(y)

    def _clip(self, y: np.ndarray) -> np.ndarray:
        spec = self.spec
        if spec.clip == "clamp":
            return np.clip(y, -spec.clip_level, spec.clip_level)
        if not spec.float_out:  # integer and lossy outputs saturate rather than wrap around
            return np.clip(y, -1.0, 1.0)
        return y

    def end(self) -> None:
        """End the stream: the resampler's tail, cut to the exact length; close the file."""
        if self._ended:
            return
        self._ended = True
        if not self._resample.passthrough:
            tail = np.concatenate([self._held, self._resample(self._held[:0], last=True)])
            want = round(self.n_in * self.rate / self.in_rate) - self.n_out  # exact length
            if len(tail) < want:
                tail = np.concatenate([tail, np.zeros((want - len(tail), self.channels), "f4")])
            self._held = self._held[:0]
            self._emit(tail[: max(want, 0)])
        with writing(self.path):
            self._sinks[-1].close()

    def rescale_gain(self) -> float:
        """The gain `clip="rescale"` applies: 1, or clip_level / peak above clip_level."""
        return 1.0 / max(self.peak / self.spec.clip_level, 1.0)

    def finish(self, gain: float | None = None) -> Path:
        """End the stream and encode; returns the finished temporary (`self.tmp`)."""
        self.end()
        if not self.two_pass:
            return self.tmp
        gain = self.rescale_gain() if gain is None else gain
        unchanged = gain == 1.0 and (self.spec.clip != "clamp" or self.peak <= self.spec.clip_level)
        if not (unchanged and self.spec.float_out):
            self._encode(gain)
        return self.tmp

    def _encode(self, gain: float) -> None:
        source = self.tmp
        self.tmp = self._open(float_temp=False)
        with writing(self.path), sf.SoundFile(source) as src:
            for block in src.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
                self.cancel.check()
                self._sinks[-1].write(self._clip(block * np.float32(gain)))
            self._sinks[-1].close()
        source.unlink(missing_ok=True)

    def commit(self) -> Path:
        """Finish and move the file into place (for a lone stem; sets of stems go through
        `separator.inference.outputs`)."""
        try:
            self.finish()
            with self.cancel.guarded(), writing(self.path):
                commit_temp(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.cancel.untrack(self)
        return self.path

    def discard_files(self) -> None:
        """Delete the temporaries and stop encoders; safe from another thread."""
        for sink in self._sinks:
            if isinstance(sink, _FfmpegSink):
                sink.kill()
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close and delete everything this writer made; the final path is never created."""
        for sink in self._sinks:
            sink.kill()
        self.discard_files()
        self.cancel.untrack(self)
        remove_folders(self._made)


def remove_folders(made: list[Path]) -> None:
    """Remove folders we made, innermost first, stopping at the first that is not empty."""
    for folder in made:
        try:
            folder.rmdir()
        except FileNotFoundError:  # removed already (a second pass of `Cancel.cancel`)
            continue
        except OSError:  # not empty: another stem or file lives there
            break
