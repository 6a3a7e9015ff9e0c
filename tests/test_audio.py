"""Audio I/O: block reading, errors, resampling lengths, safe writing, clipping."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from tiny_models import noise, write_wav

from separator.errors import SeparatorError
from separator.inference.audio import Resampler, open_audio, resample
from separator.inference.writers import StemWriter, output_subtype


def test_blocks_roundtrip(tmp_path):
    data = noise(2, 10_000)
    src = open_audio(write_wav(tmp_path / "a.wav", data, 8000))
    assert (src.sample_rate, src.channels, src.frames) == (8000, 2, 10_000)
    blocks = list(src.blocks(3000))
    assert [len(b) for b in blocks] == [3000, 3000, 3000, 1000]
    np.testing.assert_array_equal(np.concatenate(blocks), data)


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3"])
def test_soundfile_formats_open(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    sf.write(path, noise(2, 8000, scale=0.1), 16000)
    src = open_audio(path)
    total = sum(len(b) for b in src.blocks())
    assert src.sample_rate == 16000 and src.channels == 2
    assert abs(total - 8000) <= 2000  # lossy codecs pad a few frames


def test_missing_empty_folder_and_corrupt(tmp_path):
    with pytest.raises(SeparatorError, match="no such file"):
        open_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(SeparatorError, match="empty.wav: empty file"):
        open_audio(tmp_path / "empty.wav")
    with pytest.raises(SeparatorError, match="is a folder"):
        open_audio(tmp_path)
    (tmp_path / "junk.wav").write_bytes(b"RIFF this is not audio at all" * 50)
    with pytest.raises(SeparatorError, match="junk.wav"):
        src = open_audio(tmp_path / "junk.wav")
        list(src.blocks())


def test_zero_frames_and_nan(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros((0, 2), np.float32), 8000)
    with pytest.raises(SeparatorError, match="zero.wav: zero-length"):
        open_audio(tmp_path / "zero.wav")
    data = noise(2, 5000)
    data[4321, 1] = np.nan
    src = open_audio(write_wav(tmp_path / "nan.wav", data, 8000))
    with pytest.raises(SeparatorError, match=r"nan.wav: contains NaN.*0\.540 s"):
        list(src.blocks(1000))


def test_ffmpeg_fallback_reads_other_formats(tmp_path):
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    wav = write_wav(tmp_path / "a.wav", noise(2, 8000, scale=0.1), 8000, subtype="PCM_16")
    m4a = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(m4a)], check=True)
    src = open_audio(m4a)
    blocks = list(src.blocks(1000))
    assert src.sample_rate == 8000 and src.channels == 2
    assert abs(sum(len(b) for b in blocks) - 8000) < 2100
    assert all(b.dtype == np.float32 and b.shape[1] == 2 for b in blocks)


def test_no_ffmpeg_gives_install_hint(tmp_path, monkeypatch):
    import shutil as shutil_mod

    monkeypatch.setattr(shutil_mod, "which", lambda name: None)
    (tmp_path / "a.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 100)
    with pytest.raises(SeparatorError, match="a.m4a.*install ffmpeg"):
        open_audio(tmp_path / "a.m4a")


@pytest.mark.parametrize("rates", [(44100, 48000), (48000, 44100), (22050, 44100), (8000, 8000)])
def test_streaming_resampler_matches_whole_and_length(rates):
    a, b = rates
    x = noise(2, 12_345)
    whole = resample(x, a, b)
    r = Resampler(a, b, 2)
    parts = [r(x[i : i + 1000]) for i in range(0, len(x), 1000)] + [r(x[:0], last=True)]
    streamed = np.concatenate(parts)
    assert abs(len(whole) - 12_345 * b / a) <= 1
    np.testing.assert_array_equal(streamed, whole)


def test_writer_commit_and_abort(tmp_path):
    target = tmp_path / "out" / "vocals.wav"
    w = StemWriter(target, 8000, 2, fmt="wav", bits=32, clip="none")
    w.write(noise(2, 100))
    assert not target.exists()  # only the hidden temporary exists until commit
    assert w.commit() == target and sf.info(target).frames == 100
    w2 = StemWriter(tmp_path / "out" / "drums.flac", 8000, 2, fmt="flac", bits=16)
    w2.write(noise(2, 100))
    w2.abort()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["vocals.wav"]


def test_clip_modes(tmp_path):
    loud = np.array([[0.5, -2.0], [1.5, 0.25]], np.float32)
    for clip, expect in [("clamp", np.clip(loud, -1, 1)), ("rescale", loud / 2.0), ("none", loud)]:
        w = StemWriter(tmp_path / f"{clip}.wav", 8000, 2, bits=32, clip=clip)
        w.write(loud)
        got, _ = sf.read(w.commit(), dtype="float32")
        np.testing.assert_allclose(got, expect, atol=1e-7)
    w = StemWriter(tmp_path / "r16.wav", 8000, 2, bits=16, clip="rescale")
    w.write(loud)
    got, _ = sf.read(w.commit(), dtype="float32")
    np.testing.assert_allclose(got, loud / 2.0, atol=1e-4)
    assert sf.info(tmp_path / "r16.wav").subtype == "PCM_16"


def test_unsupported_output_settings():
    with pytest.raises(SeparatorError, match="flac at 32 bits"):
        output_subtype("flac", 32)
    with pytest.raises(SeparatorError, match="`clip`"):
        StemWriter(None, 8000, 2, clip="soft")  # type: ignore[arg-type]


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    from separator.inference.writers import StemWriter

    old = os.umask(0o022)
    try:
        w = StemWriter(tmp_path / "o" / "s.wav", 8000, 1)
        w.write(np.zeros((100, 1), np.float32))
        path = w.commit()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
