"""Output options on real audio (stempeg's example mixture): formats and bitrates, output rate,
--normalize, exact lengths, sum to the mixture where lossless, and atomic writes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from tiny_models import GainModel, write_wav

import separator.inference.api
from separator.cli import separate_main
from separator.errors import SeparatorError
from separator.inference.audio import read_audio, resample
from separator.inference.writers import OutputSpec, StemWriter

RATE = 44100
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


@pytest.fixture(scope="module")
def mix(stempeg_example) -> np.ndarray:
    """The real mixture cut to 4 s - 777 samples (not a whole number of codec frames)."""
    return np.ascontiguousarray(stempeg_example["mixture"].T)[: 4 * RATE - 777]


@pytest.fixture
def fake_model(monkeypatch):
    """`--model fake.yaml`: vocals = 0.5 * mix, drums/bass/other = 0.25/0.125/0.125 * mix."""
    monkeypatch.setattr(
        separator.inference.api, "load_model",
        lambda *a, **k: GainModel(sample_rate=RATE, chunk_size=RATE // 2),
    )  # fmt: skip


def run(*argv) -> int:
    return separate_main([str(a) for a in argv])


def snr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / ((ref - est) ** 2).sum()))


# Per format: (extra args, rate, frames beyond the exact length the decoder may add, min SNR).
# MP3 (LAME info tag), Vorbis and Opus (granule positions) decode to the exact length; AAC pads
# the end to a whole 1024-sample frame where the decoder ignores the mp4 edit list's end.
FORMATS = {
    "wav": (["--bits", "32"], RATE, 0, 100.0),
    "flac": (["--bits", "24"], RATE, 0, 90.0),
    "mp3": (["--bitrate", "192"], RATE, 0, 25.0),
    "ogg": (["--bitrate", "160"], RATE, 0, 15.0),
    "opus": (["--bitrate", "128"], 48000, 0, 10.0),
    "m4a": (["--bitrate", "192"], RATE, 1023, 20.0),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_length_rate_and_sum_to_mixture(tmp_path, mix, fake_model, fmt):
    if fmt == "m4a" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    args, rate, pad, min_snr = FORMATS[fmt]
    song = write_wav(tmp_path / "song.wav", mix, RATE)
    out = tmp_path / "out"
    code = run(song, "--model", "fake.yaml", "--stems", "vocals,instrumental", "-o", out,
               "--format", fmt, "--clip", "none", "-q", *args)  # fmt: skip
    assert code == 0
    folder = out / "fake" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [f"instrumental.{fmt}", f"vocals.{fmt}"]
    vocals, got_rate = read_audio(folder / f"vocals.{fmt}")
    inst, _ = read_audio(folder / f"instrumental.{fmt}")
    exact = round(len(mix) * rate / RATE)
    assert got_rate == rate and exact <= vocals.shape[1] <= exact + pad
    ref = resample(mix, RATE, rate).T if rate != RATE else mix.T
    assert snr(0.5 * ref, vocals[:, :exact]) > min_snr
    if fmt in ("wav", "flac"):  # lossless: the stems sum to the mixture (24-bit: to 2 LSB)
        np.testing.assert_allclose(vocals + inst, mix.T, atol=1e-7 if fmt == "wav" else 2.4e-7)
    else:  # the bitrate asked for, within VBR's spread
        kbps = (folder / f"vocals.{fmt}").stat().st_size * 8 / (len(mix) / RATE) / 1000
        assert 0.6 * int(args[1]) < kbps < 1.4 * int(args[1])


@pytest.mark.parametrize(
    "fmt", ["wav", "flac", "mp3", "ogg", "opus", pytest.param("m4a", marks=needs_ffmpeg)]
)
def test_writes_are_atomic(tmp_path, mix, fmt):
    """Nothing at the final path until commit; abort leaves no file at all."""
    for clip in ("rescale", "clamp"):
        target = tmp_path / clip / f"vocals.{fmt}"
        w = StemWriter(target, RATE, 2, OutputSpec(fmt, clip=clip))
        for i in range(0, len(mix), 30000):
            w.write(mix[i : i + 30000])
        assert not target.exists() and len(list(target.parent.iterdir())) == 1  # one temporary
        assert w.commit() == target and sorted(target.parent.iterdir()) == [target]
        w = StemWriter(tmp_path / clip / f"drums.{fmt}", RATE, 2, OutputSpec(fmt, clip=clip))
        w.write(mix)
        w.abort()
        assert sorted(target.parent.iterdir()) == [target]


def test_sample_rate_keeps_length_and_sum(tmp_path, mix, fake_model):
    song = write_wav(tmp_path / "song.wav", mix, RATE)
    out = tmp_path / "out"
    code = run(song, "--model", "fake.yaml", "--stems", "vocals,instrumental", "-o", out,
               "--sample-rate", "22050", "--bits", "32", "--clip", "none", "-q")  # fmt: skip
    assert code == 0
    vocals, rate = sf.read(out / "fake" / "song" / "vocals.wav", dtype="float32")
    inst, _ = sf.read(out / "fake" / "song" / "instrumental.wav", dtype="float32")
    assert rate == 22050 and len(vocals) == round(len(mix) / 2)
    ref = resample(mix, RATE, 22050)[: len(vocals)]
    assert snr(ref, vocals + inst) > 60  # the stems still sum to the (resampled) mixture
    assert snr(0.5 * ref, vocals) > 60


def test_normalize_one_gain_for_all_stems(tmp_path, mix, fake_model):
    song = write_wav(tmp_path / "song.wav", mix, RATE)
    out = tmp_path / "out"
    code = run(song, "--model", "fake.yaml", "--stems", "vocals,drums,instrumental", "-o", out,
               "--normalize", "-6dB", "--bits", "32", "-q")  # fmt: skip
    assert code == 0
    got = {s: sf.read(out / "fake" / "song" / f"{s}.wav", dtype="float32")[0]
           for s in ("vocals", "drums", "instrumental")}  # fmt: skip
    peak = 10 ** (-6 / 20)
    assert max(np.abs(v).max() for v in got.values()) == pytest.approx(peak, rel=1e-6)
    gain = peak / (0.5 * np.abs(mix).max())  # vocals and instrumental are both 0.5 * mix
    np.testing.assert_allclose(got["vocals"] + got["instrumental"], gain * mix, atol=1e-6)
    np.testing.assert_allclose(got["drums"], 0.5 * got["vocals"], atol=1e-6)  # ratios kept


def test_clip_levels_of_rescale_and_clamp(tmp_path):
    loud = np.zeros((20_000, 2), np.float32)
    loud[100, 0], loud[200, 1] = 1.5, -0.5
    for clip, level, peak in [("rescale", 1 / 1.01, 1 / 1.01), ("clamp", 0.99, 0.99)]:
        w = StemWriter(tmp_path / f"{clip}.wav", 8000, 2, bits=32, clip=clip, clip_level=level)
        w.write(loud)
        got, _ = sf.read(w.commit(), dtype="float32")
        assert np.abs(got).max() == pytest.approx(peak, rel=1e-6)


def test_spec_errors_name_the_argument():
    with pytest.raises(SeparatorError, match="`bitrate` 100: mp3 at 44100 Hz takes 32, 40"):
        OutputSpec("mp3", bitrate=100).kbps(44100, 2)
    with pytest.raises(SeparatorError, match="opus cannot be written at 44100 Hz"):
        OutputSpec("opus", sample_rate=44100).out_rate(44100)
    assert OutputSpec("opus").out_rate(44100) == 48000  # the codec's rate when none is asked
    with pytest.raises(SeparatorError, match="`bitrate` applies to lossy formats"):
        OutputSpec("flac", bitrate=320)
    with pytest.raises(SeparatorError, match="unknown `fmt` 'aiff'"):
        OutputSpec("aiff")
