"""Training: the tiny_cpu recipe learns, validates with the engine, resumes exactly, averages
gradients across torchrun processes, and exports a card that `separate` loads. Data come from a
MUSDB18HQ-layout folder built from stempeg's real stems."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from separator.errors import ConfigError, SeparatorError
from separator.training.losses import separation_loss
from separator.training.recipe import apply_overrides, load_recipe
from separator.training.trainer import Trainer, learning_rate, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
# Short excerpts, two loss resolutions and a cheap validation keep each test to seconds.
FAST = [
    "audio.chunk_size=22050",
    "training.log_every=1",
    "validation.max_seconds=3",
    "validation.max_tracks=1",
    "training.warmup_steps=2",
    "model.args.multi_stft_resolutions_window_sizes=[2048, 512]",
]


def tiny(root: Path, out: Path, *overrides: str):
    return load_recipe(TINY, [f"data.root={root}", f"output_dir={out}", *FAST, *overrides])


def read_log(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_cpu_lowers_the_loss(musdb_example, tmp_path):
    recipe = tiny(
        musdb_example,
        tmp_path / "run",
        "training.steps=30",
        "validation.every=30",
        "training.lr=1e-2",
    )
    state = train(recipe)
    assert state["step"] == 30
    rows = read_log(tmp_path / "run" / "train.csv")
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 30
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.8 * first, (first, last)  # the seeded run gives about 0.9 -> 0.5
    val = [float(r["val_sdr"]) for r in rows if r["val_sdr"]]
    assert len(val) == 1 and np.isfinite(val[0])  # validation SDR computed and logged
    assert state["best_sdr"] == pytest.approx(val[0])


def test_resumed_run_continues_identically(musdb_example, tmp_path):
    common = ["training.steps=6", "training.checkpoint_every=3", "validation.every=100"]
    full = train(tiny(musdb_example, tmp_path / "a", *common))
    train(tiny(musdb_example, tmp_path / "b", *common), stop_at=3)  # "killed" after step 3
    resumed = train(tiny(musdb_example, tmp_path / "b", *common), resume=True)
    assert full["step"] == resumed["step"] == 6
    a = {int(r["step"]): r["loss"] for r in read_log(tmp_path / "a" / "train.csv") if r["loss"]}
    b = {int(r["step"]): r["loss"] for r in read_log(tmp_path / "b" / "train.csv") if r["loss"]}
    assert set(a) == set(b) == set(range(1, 7))
    assert all(float(a[s]) == float(b[s]) for s in range(1, 7)), (a, b)
    wa = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    for key in ("model", "ema"):
        for k in wa[key]:
            assert torch.equal(wa[key][k], wb[key][k]), (key, k)


def test_resume_drops_log_rows_past_the_checkpoint(musdb_example, tmp_path):
    """A run killed between checkpoints logged steps that the resumed run logs again: the log
    keeps each step once, with the resumed run's values."""
    common = ["training.steps=5", "training.checkpoint_every=2", "validation.every=100"]
    full = tiny(musdb_example, tmp_path / "a", *common)
    train(full)
    run = tmp_path / "b"
    train(tiny(musdb_example, run, *common), stop_at=2)
    ckpt2 = (run / "last.ckpt").read_bytes()
    train(tiny(musdb_example, run, *common), resume=True, stop_at=3)  # logs step 3
    (run / "last.ckpt").write_bytes(ckpt2)  # ... then "killed" before its next checkpoint
    train(tiny(musdb_example, run, *common), resume=True)
    steps = [int(r["step"]) for r in read_log(run / "train.csv") if r["loss"]]
    assert steps == [1, 2, 3, 4, 5]
    a = {int(r["step"]): r["loss"] for r in read_log(tmp_path / "a" / "train.csv") if r["loss"]}
    b = {int(r["step"]): r["loss"] for r in read_log(run / "train.csv") if r["loss"]}
    assert a == b


def test_torchrun_two_processes_average_gradients(musdb_example, tmp_path):
    """2 processes × batch 1 (gloo) end where 1 process × batch 2 ends."""
    common = ["training.steps=2", "validation.every=100", "training.ema_decay=0"]
    single = tiny(musdb_example, tmp_path / "single", "training.batch_size=2", *common)
    train(single)
    args = [
        f"data.root={musdb_example}",
        f"output_dir={tmp_path / 'ddp'}",
        *FAST,
        "training.batch_size=1",
        *common,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "separator.cli",
        "train",
        str(TINY),
        *args,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Each step's loss and (pre-clip) gradient norm are those of the combined batch: DDP averaged
    # the two processes' gradients (a sum would double the norm; no sync would differ per rank).
    single_log = read_log(tmp_path / "single" / "train.csv")
    ddp_log = read_log(tmp_path / "ddp" / "train.csv")
    for a, b in zip(single_log, ddp_log, strict=True):
        for key in ("loss", "grad_norm"):
            if a[key]:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), (key, a, b)
    a = torch.load(tmp_path / "single" / "last.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=True)["model"]
    start = Trainer(single).model.state_dict()  # same seed: the common starting point
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training did change the weights
    for k in a:  # Adam steps are ±lr-sized, so compare at a fraction of the learning rate
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=0)


def test_exported_card_separates(musdb_example, tmp_path):
    from separator.cli import separate_main

    recipe = tiny(musdb_example, tmp_path / "run", "training.steps=2", "validation.every=2")
    train(recipe)
    card = tmp_path / "run" / "tiny_cpu.yaml"
    assert card.is_file() and (tmp_path / "run" / "best.safetensors").is_file()
    song = musdb_example / "test" / "Example - Falcon 69" / "mixture.wav"
    out = tmp_path / "out"
    assert separate_main([str(song), "--model", str(card), "-o", str(out), "--quiet"]) == 0
    written = sorted(p.name for p in (out / "tiny_cpu" / "mixture").iterdir())
    assert written == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    y, rate = sf.read(out / "tiny_cpu" / "mixture" / "vocals.wav")
    assert rate == 44100 and len(y) == sf.info(song).frames
    # `separator evaluate --model` scores the same card through the real engine.
    from separator.cli import main

    report = tmp_path / "eval"
    args = ["evaluate", str(musdb_example), "--model", str(card), "-o", str(report), "--no-plot"]
    assert main(args) == 0
    rows = (report / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:5]] == ["vocals", "drums", "bass", "other"]


def test_non_finite_losses_stop_training(musdb_example, tmp_path, monkeypatch):
    recipe = tiny(musdb_example, tmp_path / "run", "training.steps=5", "training.max_bad_steps=2")
    trainer = Trainer(recipe)
    real = trainer.dataset.__class__.__getitem__

    def poisoned(self, i):
        mix, ref = real(self, i)
        return mix * float("nan"), ref

    monkeypatch.setattr(trainer.dataset.__class__, "__getitem__", poisoned)
    with (
        pytest.warns(UserWarning, match="step skipped"),
        pytest.raises(SeparatorError, match="2 non-finite losses in a row"),
    ):
        trainer.run()
    assert trainer.state["step"] == 1  # the first bad step was skipped, not applied


def test_schedule_and_overrides():
    r = load_recipe(
        TINY,
        [
            "training.steps=100",
            "training.warmup_steps=10",
            "training.lr=1.0",
            "training.min_lr_ratio=0.1",
        ],
    )
    assert learning_rate(r, 0, 1.0) == pytest.approx(0.1)
    assert learning_rate(r, 9, 1.0) == pytest.approx(1.0)
    assert learning_rate(r, 99, 1.0) == pytest.approx(0.1, abs=1e-3)
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d=x"]) == {
        "a": {"b": 2, "c": [1, 2]},
        "d": "x",
    }
    with pytest.raises(ConfigError, match="unknown recipe key training.lrr"):
        load_recipe(TINY, ["training.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(TINY, ["training.lr"])


def test_loss_matches_msst_definition():
    """L1 + Σ_w mean |STFT_w(est) − STFT_w(ref)|, n_fft = max(w, stft_n_fft), hop 147."""
    from separator.nn.config import BSRoformerConfig

    cfg = BSRoformerConfig(
        dim=8, depth=1, stft_n_fft=2048, multi_stft_resolutions_window_sizes=(4096, 512)
    )
    est, ref = torch.randn(2, 1, 2, 9000), torch.randn(2, 1, 2, 9000)
    expected = (est - ref).abs().mean()
    for w in (4096, 512):
        kw = dict(
            n_fft=max(w, 2048),
            win_length=w,
            hop_length=147,
            window=torch.hann_window(w),
            return_complex=True,
        )
        a = torch.stft(est.reshape(-1, 9000), **kw)
        b = torch.stft(ref.reshape(-1, 9000), **kw)
        expected = expected + (a - b).abs().mean()
    torch.testing.assert_close(separation_loss(est, ref, cfg), expected, rtol=1e-5, atol=1e-6)


def test_worker_processes_read_the_same_batches(musdb_example, tmp_path):
    plain = Trainer(tiny(musdb_example, tmp_path / "a", "training.steps=3"))
    workers = Trainer(tiny(musdb_example, tmp_path / "b", "training.steps=3", "data.num_workers=2"))
    a = list(plain._loader(1, 3))
    b = list(workers._loader(1, 3))
    assert len(a) == len(b) == 2
    for (ma, ra), (mb, rb) in zip(a, b, strict=True):
        assert torch.equal(ma, mb) and torch.equal(ra, rb)
    expected = torch.stack([plain.dataset[i][0] for i in plain._indices(2)])
    assert torch.equal(a[1][0], expected)  # step 2 reads examples 4 and 5


def test_musdb18_stem_files_convert(tmp_path):
    """MUSDB18 `.stem.mp4` files (through musdb + ffmpeg) become a MUSDB18HQ-layout folder."""
    import shutil

    stempeg = pytest.importorskip("stempeg")
    pytest.importorskip("musdb")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing")
    from separator.datasets import find_tracks, musdb_to_folder

    (tmp_path / "mp4" / "test").mkdir(parents=True)
    shutil.copy(stempeg.example_stem_path(), tmp_path / "mp4" / "test" / "Song.stem.mp4")
    out = musdb_to_folder(tmp_path / "mp4", tmp_path / "hq", subsets=("test",))
    (track,) = find_tracks(out, subset="test", with_mixture=True)
    assert track.name == "Song" and track.sample_rate == 44100 and track.channels == 2
    assert track.frames > 5 * 44100
