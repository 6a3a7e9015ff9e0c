"""Ctrl-C on the real `separate` program, in a subprocess, on long generated files.

The model is a random-weight tiny BS-RoFormer (an MSST YAML and .ckpt in tmp_path), slow enough
on this CPU that a 40 s file takes tens of seconds. Each case sends SIGINT at a chosen moment:
- mid-separation: once every file has its hidden temporaries;
- during the final renames: `SEPARATOR_TEST_COMMIT_PAUSE` (read only by the commit step) waits
  after each rename, so the test sees the first stem appear and interrupts before the second.
  A hook is deterministic where a large file only makes the window likely.
After each: exit code 130 well within 30 s, "interrupted" printed, no temporary or lock file
left, and each track has all its stems or none. A second process started on the same outputs
while the first writes them is refused with "already exists".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_cli_separate import tiny_bs_files

ROOT = Path(__file__).resolve().parent.parent
STEMS = {"vocals.wav", "other.wav"}
PROGRAM = "import sys; from separator.cli import separate_console_main as m; m()"


def _song(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = (0.2 * rng.standard_normal((int(44100 * seconds), 2))).astype(np.float32)
    sf.write(path, data, 44100, subtype="PCM_16")
    return path


def _command(tmp_path: Path, songs: list[Path], *args: str, pause: float = 0.0):
    config, ckpt = tmp_path / "tiny0.yaml", tmp_path / "tiny0.ckpt"
    if not ckpt.exists():
        tiny_bs_files(tmp_path)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env["SEPARATOR_TEST_COMMIT_PAUSE"] = str(pause)
    cmd = [sys.executable, "-c", PROGRAM, *map(str, songs), "--model", str(ckpt), "--config",
           str(config), "-o", str(tmp_path / "out"), "-q", "--clip", "none", *args]  # fmt: skip
    return cmd, env


def _start(tmp_path: Path, songs: list[Path], *args: str, pause: float = 0.0):
    cmd, env = _command(tmp_path, songs, *args, pause=pause)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"separate ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("the awaited moment never came")
        time.sleep(0.02)


def _interrupt(proc) -> tuple[int, str, float]:
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("separate did not stop within 30 s of Ctrl-C")
    return proc.returncode, err, time.monotonic() - sent


def _leftovers(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [p.name for p in out.rglob("*") if p.name.endswith((".part", ".lock"))]


def _stem_sets(out: Path) -> dict[str, set[str]]:
    tracks = out / "tiny0"
    if not tracks.exists():
        return {}
    return {d.name: {p.name for p in d.iterdir()} for d in tracks.iterdir()}


def _parts(out: Path) -> set[str]:
    return {p.parent.name for p in out.rglob("*.part")} if out.exists() else set()


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_mid_separation_stops_fast_and_leaves_nothing(tmp_path, jobs):
    songs = [_song(tmp_path / f"song{i}.wav", 30, seed=i) for i in range(jobs)]
    proc = _start(tmp_path, songs, "--jobs", str(jobs))
    out = tmp_path / "out"
    _wait_for(lambda: len(_parts(out)) == jobs, proc)  # every file is being separated
    time.sleep(0.5)
    code, err, seconds = _interrupt(proc)
    print(f"jobs {jobs}: stopped {seconds:.2f} s after SIGINT")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _leftovers(out) == []
    assert _stem_sets(out) == {}  # no stem of an unfinished file
    assert not out.exists() or not any(out.rglob("*"))  # not even the folders


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_during_the_renames_keeps_whole_sets_only(tmp_path, jobs):
    songs = [_song(tmp_path / "short.wav", 2)]
    if jobs == 2:  # a second file mid-separation while the first one is renamed
        songs.append(_song(tmp_path / "long.wav", 30, seed=1))
    proc = _start(tmp_path, songs, "--jobs", str(jobs), pause=1.5)
    out = tmp_path / "out"
    first = out / "tiny0" / "short"
    _wait_for(lambda: first.exists() and any(p.suffix == ".wav" for p in first.iterdir()), proc)
    assert len(_stem_sets(out)["short"] & STEMS) == 1  # interrupted between the two renames
    code, err, seconds = _interrupt(proc)
    print(f"jobs {jobs}: stopped {seconds:.2f} s after SIGINT (the commit pause is 1.5 s)")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _leftovers(out) == []
    assert _stem_sets(out) == {"short": STEMS}  # the set being renamed is whole, nothing else
    for stem in STEMS:
        assert sf.info(first / stem).frames == 2 * 44100


def test_a_second_process_on_the_same_outputs_is_refused(tmp_path):
    song = _song(tmp_path / "song.wav", 30)
    proc = _start(tmp_path, [song])
    out = tmp_path / "out"
    _wait_for(lambda: len(_parts(out)) == 1, proc)
    cmd, env = _command(tmp_path, [song])
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    target = out / "tiny0" / "song" / "other.wav"  # the first path claimed (sorted)
    assert second.returncode == 2
    assert f"error: {target}: already exists (another run is writing it now)" in second.stderr
    code, _, _ = _interrupt(proc)
    assert code == 130 and _leftovers(out) == [] and _stem_sets(out) == {}
