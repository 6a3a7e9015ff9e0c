"""Library-scale separation: `separator separate` under torchrun (2 CPU processes, gloo).

A folder of 6 short files, one of them corrupt. The first run is killed (SIGKILL, workers and
torchrun alike) once two files are done; the second finishes the rest. Each file is separated
once, by the rank its place in the sorted list gives it; the corrupt one is in the manifest as
failed while the others finish; nothing of the killed run is left behind.
"""

from __future__ import annotations

import json
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


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (torchrun starts its workers in new sessions)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _records(manifest: Path) -> list[dict]:
    if not manifest.exists():
        return []
    return [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find workers")
def test_torchrun_shards_records_and_resumes(tmp_path):
    lib, out = tmp_path / "lib", tmp_path / "out"
    lib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(lib / f"song{i}.wav", (0.2 * rng.standard_normal((44100, 2))).astype("f4"), 44100)
    (lib / "song5.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt broken" * 40)
    config, ckpt = tiny_bs_files(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "separator.cli", "separate", str(lib), "-o", str(out), "--model", str(ckpt),
           "--config", str(config), "-q"]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(OMP_NUM_THREADS="1", SEPARATOR_TEST_COMMIT_PAUSE="1.0")  # ~2 s a file: time to kill
    manifest = out / "manifest.jsonl"

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 240
    while sum(r["status"] == "ok" for r in _records(manifest)) < 2:
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < end, "the first run never finished two files"
        time.sleep(0.05)
    for pid in _children(first.pid):
        os.kill(pid, signal.SIGKILL)
    first.kill()
    first.wait(timeout=60)
    done_first = {Path(r["input"]).name for r in _records(manifest) if r["status"] == "ok"}
    assert 2 <= len(done_first) < 5  # killed midway
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    lines_first = len(_records(manifest))

    env["SEPARATOR_TEST_COMMIT_PAUSE"] = "0"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode != 0  # the corrupt file failed (torchrun reports the ranks' exit 2)
    records = _records(manifest)
    again = records[lines_first:]

    files = sorted(f"song{i}.wav" for i in range(6))
    ok = [Path(r["input"]).name for r in records if r["status"] == "ok"]
    assert sorted(ok) == sorted(set(ok))  # nothing separated twice
    assert set(ok) | {Path(r["input"]).name for r in again if r["status"] == "skipped"} == set(
        files[:5]
    )
    for r in again:  # each rank took every second file of the sorted list
        assert r["rank"] == files.index(Path(r["input"]).name) % 2
        assert set(r) >= {"rank", "status", "seconds", "rtf", "error", "stems", "model"}
    skipped_now = {Path(r["input"]).name for r in again if r["status"] == "skipped"}
    assert done_first <= skipped_now  # what the killed run finished was not redone
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nor rewritten
    (bad,) = [r for r in again if r["status"] == "failed"]
    assert bad["input"].endswith("song5.wav") and "song5.wav" in bad["error"]
    for i in range(5):
        assert sorted(p.name for p in (out / "tiny0" / f"song{i}").iterdir()) == [
            "other.wav",
            "vocals.wav",
        ]
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".part", ".lock"))]
    assert leftovers == []  # the killed run's temporaries were cleared by the claims
