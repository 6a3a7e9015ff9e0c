"""`separate` as a batch tool, in-process on files in tmp_path: output-side OS errors, races
between inputs and between runs, --recursive, --json, --chunk-seconds, demucs' flags, info."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf
from tiny_models import GainModel, noise, write_wav

import separator.inference.api
from separator.cli import main, separate_main

RATE = 44100
GAINS = (0.5, 0.2, 0.1, 0.1)  # not summing to 1: "add" and "minus" residuals differ


@pytest.fixture
def model_seen(monkeypatch):
    """`--model fake.yaml`: a GainModel; returns the chunk lengths its forward saw."""
    seen: list[int] = []

    class Recording(GainModel):
        def forward(self, x):
            seen.append(x.shape[-1])
            return super().forward(x)

    monkeypatch.setattr(
        separator.inference.api, "load_model",
        lambda *a, **k: Recording(sample_rate=RATE, chunk_size=RATE // 2, gains=GAINS),
    )  # fmt: skip
    return seen


def run(*argv) -> int:
    return separate_main([str(a) for a in argv])


def files_under(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]


# --- output-side OS errors -----------------------------------------------------------------------
def test_unwritable_folder_fails_that_file_only(tmp_path, model_seen, capsys, monkeypatch):
    a, b = (write_wav(tmp_path / f"{n}.wav", noise(2, 5000), RATE) for n in "ab")
    out = tmp_path / "out"
    locked = out / "fake" / "a"
    locked.mkdir(parents=True)
    locked.chmod(0o555)  # enough for a normal user; root passes os.access, so report it here
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: real_access(p, m) and str(p) != str(locked))
    assert run(a, b, "--model", "fake.yaml", "--stems", "vocals", "-o", out) == 2
    assert errors(capsys) == [f"error: {locked}: cannot write (folder is not writable)"]
    locked.chmod(0o755)
    assert files_under(out) == ["fake/b/vocals.wav"]  # b went on; nothing partial of a


def test_output_that_is_a_file(tmp_path, model_seen, capsys):
    song = write_wav(tmp_path / "s.wav", noise(2, 1000), RATE)
    (tmp_path / "o").write_text("not a folder")
    assert run(song, "--model", "fake.yaml", "-o", tmp_path / "o") == 2
    assert errors(capsys) == [f"error: {tmp_path / 'o'}: not a folder (-o names the output folder)"]
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "fake").write_text("in the way")
    assert run(song, "--model", "fake.yaml", "-o", tmp_path / "o2") == 2
    assert errors(capsys)[0].startswith(f"error: {tmp_path / 'o2' / 'fake'}: not a folder")


def test_full_disk_mocked(tmp_path, model_seen, capsys, monkeypatch):
    from separator.inference import writers

    real_write = writers._SfSink.write

    def write(self, block):  # the disk fills up while a's first stem is written
        if "/a/" in str(self._file.name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(self, block)

    monkeypatch.setattr(writers._SfSink, "write", write)
    a, b = (write_wav(tmp_path / f"{n}.wav", noise(2, 5000), RATE) for n in "ab")
    out = tmp_path / "out"
    assert run(a, b, "--model", "fake.yaml", "--stems", "vocals,drums", "-o", out) == 2
    target = out / "fake" / "a" / "vocals.wav"
    assert errors(capsys) == [f"error: {target}: cannot write (No space left on device)"]
    assert files_under(out) == ["fake/b/drums.wav", "fake/b/vocals.wav"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root with mount rights only; skipped elsewhere)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_on_a_real_tmpfs(tmp_path, small_tmpfs, model_seen, capsys):
    song = write_wav(tmp_path / "s.wav", noise(2, 4 * RATE), RATE)  # 2 MB of float stems
    assert run(song, "--model", "fake.yaml", "--stems", "vocals", "-o", small_tmpfs) == 2
    (line,) = errors(capsys)
    assert line.endswith(": cannot write (No space left on device)")
    assert str(small_tmpfs / "fake" / "s" / "vocals.wav") in line
    assert files_under(small_tmpfs) == []  # no .part, no lock, no folder


# --- races and overwrites ------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_same_track_name_twice_refuses_the_second(tmp_path, model_seen, capsys, jobs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_wav(tmp_path / "a" / "song.wav", noise(2, 6000, seed=1), RATE)
    second = write_wav(tmp_path / "b" / "song.wav", noise(2, 6000, seed=2), RATE)
    out = tmp_path / "out"
    assert run(first, second, "--model", "fake.yaml", "--stems", "vocals", "-o", out,
               "--jobs", jobs, "--bits", "32", "--force") == 2  # fmt: skip
    target = out / "fake" / "song" / "vocals.wav"
    assert errors(capsys) == [f"error: {target}: already exists (written by {first} in this run)"]
    got, _ = sf.read(target, dtype="float32")
    np.testing.assert_allclose(got, 0.5 * noise(2, 6000, seed=1), atol=1e-7)  # the first's


def test_a_claimed_output_is_refused(tmp_path, model_seen, capsys):
    """Another process writing the same stems holds their claims: this run fails that file."""
    from separator.inference.outputs import Claim

    song = write_wav(tmp_path / "song.wav", noise(2, 3000), RATE)
    target = tmp_path / "out" / "fake" / "song" / "vocals.wav"
    target.parent.mkdir(parents=True)
    other = Claim(target)
    other.acquire()  # flock: what a second process would hold
    try:
        assert run(song, "--model", "fake.yaml", "--stems", "vocals", "-o", tmp_path / "out") == 2
        assert errors(capsys) == [
            f"error: {target}: already exists (another run is writing it now)"
        ]
        assert not target.exists()
    finally:
        other.release()
    assert run(song, "--model", "fake.yaml", "--stems", "vocals", "-o", tmp_path / "out") == 0
    assert files_under(tmp_path / "out") == ["fake/song/vocals.wav"]  # lock file gone too


# --- batch features ------------------------------------------------------------------------------
def test_recursive_mirrors_the_tree_and_skips_its_output(tmp_path, model_seen, capsys):
    lib = tmp_path / "lib"
    for rel in ("x.wav", "a/y.wav", "a/b/z.flac", ".hidden/h.wav"):
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(lib / rel, noise(2, 2000), RATE)
    out = lib / "separated"  # inside the library: never read back as input
    args = [lib, "--model", "fake.yaml", "--stems", "vocals", "-o", out, "--recursive", "--json"]
    assert run(*args) == 0
    assert files_under(out) == ["fake/a/b/z/vocals.wav", "fake/a/y/vocals.wav", "fake/x/vocals.wav"]
    capsys.readouterr()
    assert run(*args) == 0  # again: all skipped, nothing new read from out/
    records = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert sorted(r["input"] for r in records) == sorted(
        str(lib / p) for p in ("x.wav", "a/y.wav", "a/b/z.flac")
    )
    assert {r["status"] for r in records} == {"skipped"}
    assert run(lib, "--model", "fake.yaml", "--stems", "vocals", "-o", tmp_path / "flat") == 0
    assert files_under(tmp_path / "flat") == ["fake/x/vocals.wav"]  # not recursive by default


def test_json_summary_per_file(tmp_path, model_seen, capsys):
    good = write_wav(tmp_path / "good.wav", noise(2, 2 * RATE), RATE)
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk" * 30)
    out = tmp_path / "out"
    assert run(good, tmp_path / "bad.wav", "--model", "fake.yaml", "--stems", "vocals,drums",
               "-o", out, "--json", "-q") == 2  # fmt: skip
    ok, bad = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ok["status"] == "ok" and ok["model"] == "fake" and ok["input"] == str(good)
    assert ok["stems"] == {s: str(out / "fake" / "good" / f"{s}.wav") for s in ("vocals", "drums")}
    assert ok["audio_seconds"] == 2.0 and ok["seconds"] > 0 and ok["rtf"] > 0 and not ok["error"]
    assert bad["status"] == "failed" and "bad.wav" in bad["error"] and bad["stems"] == {}


def test_chunk_seconds_overrides_the_card(tmp_path, model_seen):
    song = write_wav(tmp_path / "s.wav", noise(2, 3 * RATE), RATE)
    assert run(song, "--model", "fake.yaml", "-o", tmp_path / "o", "--chunk-seconds", "0.25") == 0
    assert set(model_seen) == {round(0.25 * RATE)}
    assert run(song, "--model", "fake.yaml", "-o", tmp_path / "o", "--chunk-seconds", "0") == 2


def test_demucs_output_flags(tmp_path, model_seen):
    mix = 3.0 * noise(2, 8000)  # vocals (0.5 mix) peak above 1, so the clip modes show
    song = write_wav(tmp_path / "song.wav", mix, RATE)
    out = tmp_path / "out"

    def stems(*args) -> dict[str, np.ndarray]:
        for p in out.rglob("*"):
            if p.is_file():
                p.unlink()
        assert run(song, "-n", "fake.yaml", "-o", out, "--float32", "--clip", "none", *args) == 0
        return {p.stem: sf.read(p, dtype="float32")[0] for p in out.rglob("*.wav")}

    got = stems("--two-stems", "vocals")
    np.testing.assert_allclose(got["no_vocals"], 0.5 * mix, atol=1e-6)  # minus: mix - vocals
    got = stems("--two-stems", "vocals", "--other-method", "add")
    np.testing.assert_allclose(got["no_vocals"], 0.4 * mix, atol=1e-6)  # drums + bass + other
    assert list(stems("--two-stems", "vocals", "--other-method", "none")) == ["vocals"]
    for p in out.rglob("*"):
        if p.is_file():
            p.unlink()
    assert run(song, "-n", "fake.yaml", "-o", out, "--stems", "vocals", "--clip-mode", "clamp",
               "--float32", "--filename", "{track}.{trackext}.{stem}.{ext}") == 0  # fmt: skip
    clamped, _ = sf.read(out / "song.wav.vocals.wav", dtype="float32")
    assert np.abs(clamped).max() == pytest.approx(0.99)  # demucs clamps at ±0.99
    assert run(song, "-n", "fake.yaml", "-o", tmp_path / "m", "--mp3", "--mp3-bitrate", "128",
               "--stems", "vocals", "--int24") == 0  # fmt: skip
    mp3 = tmp_path / "m" / "fake" / "song" / "vocals.mp3"
    assert sf.info(mp3).format == "MP3" and sf.info(mp3).frames == 8000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int24", "--float32"], "--int24 and --float32: give one"),
        (["--clip", "none", "--clip-mode", "clamp"], "--clip and --clip-mode: give one"),
        (["--mp3", "--format", "flac"], "--mp3 and --format flac: give one"),
        (["--mp3-bitrate", "320"], "--mp3-bitrate and --mp3-preset need --mp3"),
        (["--two-stems", "vocals", "--stems", "drums"], "--two-stems and --stems: give one"),
        (["--other-method", "none"], "--other-method none applies to --two-stems"),
        (["--normalize", "2"], "--normalize '2': a peak in (0, 1]"),
        (["--format", "opus", "--sample-rate", "44100"], "opus cannot be written at 44100 Hz"),
        (["--format", "mp3", "--bitrate", "100"], "--bitrate 100: mp3 at 44100 Hz takes"),
    ],
)
def test_flag_errors_are_one_line(tmp_path, model_seen, capsys, args, message):
    song = write_wav(tmp_path / "s.wav", noise(2, 1000), RATE)
    assert run(song, "--model", "fake.yaml", "-o", tmp_path / "o", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_separator_separate_and_info(tmp_path, model_seen, capsys):
    song = write_wav(tmp_path / "s.wav", noise(2, 1000), RATE)
    assert main(["separate", str(song), "--model", "fake.yaml", "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "fake" / "s" / "vocals.wav").is_file()
    capsys.readouterr()
    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["torch"] and "capability" in facts["cpu"] and facts["cache"]
    assert "wav" in facts["writes"] and "ffmpeg" in facts
