"""`separator evaluate` goes past a bad track: it is listed as failed with its file's name, the
other tracks are scored, the summary is written, and the exit code is 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import soundfile as sf

from separator.cli import main

RATE = 44100
STEMS = ("vocals", "drums", "bass", "other")


def write_track(folder, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    refs = {s: 0.1 * rng.standard_normal((RATE, 2)).astype(np.float32) for s in STEMS}
    for stem, ref in refs.items():
        sf.write(folder / f"{stem}.wav", ref, RATE, subtype="FLOAT")
    sf.write(folder / "mixture.wav", sum(refs.values()), RATE, subtype="FLOAT")


def test_a_bad_track_fails_alone(tmp_path, capsys):
    root = tmp_path / "musdb"
    for i, name in enumerate(("A - One", "B - Broken", "C - Three")):
        write_track(root / "test" / name, i)
    bad = root / "test" / "B - Broken" / "drums.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 10)
    out = tmp_path / "eval"
    rc = main(["evaluate", str(root), "--baseline", "mixture", "-o", str(out), "--no-plot"])
    assert rc == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: track 'B - Broken' failed: ") and str(bad) in errors[0]
    assert "scored 2, resumed 0, failed 1" in captured.out
    assert sorted(p.name for p in (out / "test").glob("*.json")) == [
        "A - One.json",
        "C - Three.json",
    ]
    with open(out / "summary.csv") as f:
        rows = {r["stem"]: r for r in csv.DictReader(f)}
    assert set(rows) == {*STEMS, "mean"} and all(r["tracks"] == "2" for r in rows.values())
    doc = json.loads((out / "test" / "C - Three.json").read_text())
    assert [t["name"] for t in doc["targets"]] == list(STEMS)
