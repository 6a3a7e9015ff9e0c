"""`separator train` shows its progress (one line per logging interval) and never silently
replaces an earlier run: without `--resume` or `--force`, an output folder holding a run is
refused."""

from __future__ import annotations

import re

import pytest
from test_train import TINY, read_log, tiny

from separator.cli import main
from separator.errors import SeparatorError
from separator.training import train

LINE = re.compile(r"^step (\d+)/3  loss \d+\.\d{4}  \d+\.\d\d steps/s  ETA \d+:\d\d:\d\d$")


def test_progress_line_per_logging_interval(musdb_example, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [f"data.root={musdb_example}", f"output_dir={out}", "audio.chunk_size=11025",
                 "validation.max_seconds=2", "validation.max_tracks=1", "training.steps=3",
                 "training.log_every=2", "training.warmup_steps=1", "training.batch_size=1",
                 "model.args.multi_stft_resolutions_window_sizes=[2048, 512]"]  # fmt: skip
    assert main(["train", str(TINY), *overrides]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    steps = [int(m.group(1)) for m in map(LINE.match, lines) if m]
    assert steps == [1, 2, 3]  # the first step, then every log_every steps and the last
    assert re.search(r"^step 3: validation SDR -?\d+\.\d\d dB \(best -?\d+\.\d\d dB\)$",
                     captured.err, re.MULTILINE)  # fmt: skip
    assert "done: step 3" in captured.out
    rows = read_log(out / "train.csv")  # the CSV log is as before
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3]
    assert [int(r["step"]) for r in rows if r["val_sdr"]] == [3]


def test_an_earlier_run_is_not_replaced_without_force(musdb_example, tmp_path, capsys):
    out = tmp_path / "run"
    fast = ["training.steps=1", "training.batch_size=1", "audio.chunk_size=11025",
            "validation.max_seconds=2"]  # fmt: skip
    train(tiny(musdb_example, out, *fast))  # validates at its end: exports best weights + card
    best = (out / "best.safetensors").read_bytes()
    assert (out / "tiny_cpu.yaml").is_file()
    with pytest.raises(SeparatorError, match=r"run: holds an earlier run \(last.ckpt, best"):
        train(tiny(musdb_example, out, *fast))
    overrides = [f"data.root={musdb_example}", f"output_dir={out}", *fast]
    assert main(["train", str(TINY), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}: holds an earlier run") and len(err.splitlines()) == 1
    assert "pass --resume to continue it or --force to replace it" in err
    assert "choose another output_dir=DIR" in err
    assert (out / "best.safetensors").read_bytes() == best
    # `force` replaces it: a new run stopped before its first validation leaves none of the old
    # run's weights, card or log rows behind.
    train(tiny(musdb_example, out, *fast), force=True, stop_at=0)
    assert not (out / "best.safetensors").exists() and not (out / "tiny_cpu.yaml").exists()
    assert read_log(out / "train.csv") == [] and not (out / "last.ckpt").exists()
