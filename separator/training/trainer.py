"""Trainer: `separator train RECIPE.yaml [key=value ...]`, on one CPU or many GPUs (torchrun).

- AdamW, gradient clipping, warm-up then cosine or plateau schedule, gradient accumulation.
- bf16/fp16 autocast on GPU (the models keep STFT and masks in float32), optional gradient
  checkpointing and `torch.compile`.
- EMA of the weights; validation separates whole tracks with the inference engine and scores
  them with the global SDR; the best EMA checkpoint is kept.
- DDP through torchrun: NCCL on GPUs, gloo on the CPU. Batches are functions of the step, so a
  resumed run (`--resume`) continues exactly where the killed one stopped.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from separator.datasets import find_tracks
from separator.errors import SeparatorError
from separator.files import atomic_write
from separator.training.data import RandomMixDataset
from separator.training.losses import separation_loss
from separator.training.model import build_training_model, recipe_card, training_loss
from separator.training.recipe import Recipe
from separator.training.runs import ProgressLog, prepare_run_folder
from separator.zoo import save_card
from separator.zoo.cards import weights_entry
from separator.zoo.formats import save_state_dict


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the torchrun process group if there is one (NCCL on GPUs, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Dist(0, 1, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def learning_rate(recipe: Recipe, step: int, plateau_scale: float) -> float:
    """Warm-up (linear) then cosine decay, plateau reductions, or constant."""
    t = recipe.training
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "cosine":
        span = max(1, t.steps - t.warmup_steps)
        progress = min(1.0, (step - t.warmup_steps) / span)
        floor = t.min_lr_ratio
        return t.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    if t.schedule == "plateau":
        return t.lr * plateau_scale
    return t.lr


class EMA:
    """Exponential moving average of a model's floating-point state (float32 shadow)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(p)


class Trainer:
    """One training run. `run()` trains to `training.steps` (or `stop_at`) and returns the
    final state; everything is written under `recipe.output_dir`."""

    def __init__(self, recipe: Recipe, *, resume: bool = False) -> None:
        self.recipe = recipe
        self.dist = init_distributed()
        self.out = Path(recipe.output_dir)
        torch.manual_seed(recipe.seed)
        self.card = recipe_card(recipe)  # what `export` writes: the recipe's own model arguments
        self.model = build_training_model(recipe, self.card).to(self.dist.device).train()
        self.loss = training_loss(recipe, self.model)
        self.ema = EMA(self.model, recipe.training.ema_decay) if recipe.training.ema_decay else None
        t = recipe.training
        # The fused kernel updates all (many, small per-band) tensors at once; same math.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=t.lr,
            betas=tuple(t.betas),
            weight_decay=t.weight_decay,
            fused=True,
        )
        self.scaler = torch.amp.GradScaler(
            enabled=t.amp == "fp16" and self.dist.device.type == "cuda"
        )
        self.state = {
            "step": 0,
            "best_sdr": -math.inf,
            "bad_steps": 0,
            "plateau_scale": 1.0,
            "plateau_wait": 0,
        }
        if resume:
            self._load(self.out / "last.ckpt")
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.net = torch.compile(self.net)
        self.dataset = self._dataset()

    # --- set-up ----------------------------------------------------------------------------
    def _dataset(self) -> RandomMixDataset:
        r = self.recipe
        d = r.data
        tracks = find_tracks(d.root, d.stems, subset=d.subset, split=d.split)
        t = r.training
        return RandomMixDataset(
            tracks=tracks,
            stems=tuple(d.stems),
            targets=r.model_stems,
            chunk_size=r.audio.chunk_size,
            length=t.steps * t.grad_accum * t.batch_size * self.dist.world,
            seed=r.seed,
            augment=d.augment,
            min_mean_abs=d.min_mean_abs,
            channels=self.model.audio_channels,
        )

    def _indices(self, step: int) -> list[int]:
        """Dataset indices of one step for this process, micro-batch after micro-batch.

        Step s of the whole job uses examples [s·P, (s+1)·P) with P = accum × batch × world;
        each process takes its own slice of every micro-batch, so 2 processes × batch 1 see
        what 1 process × batch 2 sees.
        """
        t = self.recipe.training
        per_step = t.grad_accum * t.batch_size * self.dist.world
        out = []
        for micro in range(t.grad_accum):
            first = step * per_step + (micro * self.dist.world + self.dist.rank) * t.batch_size
            out.extend(range(first, first + t.batch_size))
        return out

    def _loader(self, start: int, end: int):
        """Micro-batches (mixture, targets) for steps [start, end), from worker processes when
        `data.num_workers` > 0. Examples depend only on their index, so workers need no seeds
        of their own and a resumed run reads exactly the batches it would have read."""
        indices = [i for step in range(start, end) for i in self._indices(step)]
        workers = self.recipe.data.num_workers
        return iter(torch.utils.data.DataLoader(
            self.dataset, batch_size=self.recipe.training.batch_size, sampler=indices,
            num_workers=workers, pin_memory=self.dist.device.type == "cuda",
            prefetch_factor=2 if workers else None,
        ))  # fmt: skip

    def _batches(self, loader):
        """The micro-batches of one step: (index, mixture, targets) on the device."""
        for micro in range(self.recipe.training.grad_accum):
            mix, ref = next(loader)
            yield micro, mix.to(self.dist.device), ref.to(self.dist.device)

    # --- the loop ----------------------------------------------------------------------------
    def run(
        self, stop_at: int | None = None, progress: Callable[[str], None] | None = None
    ) -> dict:
        """Train until `training.steps` (or until step `stop_at`, for chunked runs and tests).

        `progress` gets one line per logging interval (step, loss, steps/s, ETA) and one per
        validation, on the main process."""
        t, v = self.recipe.training, self.recipe.validation
        end = min(t.steps, stop_at) if stop_at is not None else t.steps
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_yaml(self.out / "recipe.yaml", self.recipe.to_dict())
        log = _Log(self.out / "train.csv", self.dist.main, self.state["step"])
        shown = ProgressLog(progress if self.dist.main else None, self.state["step"], end)
        loader = self._loader(self.state["step"], end)
        while self.state["step"] < end:
            step = self.state["step"]
            t0 = time.perf_counter()
            loss, grad_norm = self._step(step, loader)
            self.state["step"] = step + 1
            shown.add(loss)
            if (step + 1) % t.log_every == 0 or step == 0 or step + 1 == end:
                log.row(
                    step=step + 1,
                    loss=loss,
                    lr=self._lr(step),
                    grad_norm=grad_norm,
                    seconds=time.perf_counter() - t0,
                )
                shown.report(step + 1)
            done = step + 1 == t.steps
            if (step + 1) % v.every == 0 or done:
                t0, best = time.perf_counter(), self.state["best_sdr"]
                sdr = self.validate()
                log.row(step=step + 1, val_sdr=sdr)
                self._after_validation(sdr)
                shown.validation(step + 1, sdr, best, seconds=time.perf_counter() - t0)
            if (step + 1) % t.checkpoint_every == 0 or step + 1 == end:
                self._save(self.out / "last.ckpt")
        log.close()
        return dict(self.state)

    def _lr(self, step: int) -> float:
        return learning_rate(self.recipe, step, self.state["plateau_scale"])

    def _step(self, step: int, loader) -> tuple[float, float]:
        t = self.recipe.training
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(step)
        total = torch.zeros((), device=self.dist.device)
        for micro, mix, ref in self._batches(loader):
            sync = micro == t.grad_accum - 1 or self.dist.world == 1
            ctx = self.net.no_sync() if not sync and hasattr(self.net, "no_sync") else _null()
            with ctx, self._autocast():
                loss = separation_loss(self.net(mix), ref, self.loss) / t.grad_accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.dist.world > 1:
            dist.all_reduce(total)
            total /= self.dist.world
        if not torch.isfinite(total):
            return self._skip(step, float(total)), float("nan")
        self.state["bad_steps"] = 0
        self.scaler.unscale_(self.optimizer)
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return float(total), float(norm)

    def _skip(self, step: int, value: float) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        self.state["bad_steps"] += 1
        warnings.warn(f"step {step + 1}: loss is {value}; step skipped", stacklevel=2)
        limit = self.recipe.training.max_bad_steps
        if self.state["bad_steps"] >= limit:
            raise SeparatorError(
                f"training stopped: {limit} non-finite losses in a row (last at step {step + 1}); "
                "lower training.lr, enable training.grad_clip or check the data"
            )
        return value

    def _autocast(self):
        amp = self.recipe.training.amp
        if amp == "none" or self.dist.device.type != "cuda":
            return _null()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    # --- validation and checkpoints ---------------------------------------------------------
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def validate(self) -> float:
        """Mean global SDR (dB) over validation tracks and stems, from the EMA model."""
        score = torch.zeros((), dtype=torch.float64)
        if self.dist.main:
            score += validation_sdr(self.eval_model, self.recipe)
        if self.dist.world > 1:
            score = score.to(self.dist.device)
            dist.broadcast(score, 0)
        return float(score)

    def _after_validation(self, sdr: float) -> None:
        s, t = self.state, self.recipe.training
        if sdr > s["best_sdr"]:
            s["best_sdr"], s["plateau_wait"] = sdr, 0
            if self.dist.main:
                save_state_dict(self.eval_model, self.out / "best.safetensors")
                self.export(sdr)
        else:
            s["plateau_wait"] += 1
            if t.schedule == "plateau" and s["plateau_wait"] >= t.plateau_patience:
                s["plateau_scale"] *= t.plateau_factor
                s["plateau_wait"] = 0

    def export(self, sdr: float) -> Path:
        """Model card + safetensors of the best weights, loadable with `separate --model`."""
        weights = self.out / "best.safetensors"
        card = dataclasses.replace(
            self.card,
            weights=weights_entry(weights),
            sdr={
                "benchmark": "validation (global SDR, dB)",
                "mean": round(sdr, 3),
                "step": self.state["step"],
            },
        )
        path = self.out / f"{self.recipe.name}.yaml"
        save_card(card, path)
        return path

    def _save(self, path: Path) -> None:
        if not self.dist.main:
            return
        ckpt = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else {},
            "state": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.state.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "recipe": self.recipe.to_dict(),
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write(path, buf.getvalue())

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise SeparatorError(f"{path}: no checkpoint to resume from")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.model.load_state_dict(ckpt["ema"])
        for k, v in ckpt["state"].items():
            self.state[k] = int(v) if k in ("step", "bad_steps", "plateau_wait") else float(v)
        torch.set_rng_state(ckpt["rng"])
        if torch.cuda.is_available() and ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])


def validation_sdr(model: nn.Module, recipe: Recipe) -> float:
    """Separate the validation tracks with the engine; mean global SDR over tracks and stems."""
    from separator.evaluation.metrics import sdr
    from separator.inference.engine import separate_tensor

    v, d = recipe.validation, recipe.data
    tracks = find_tracks(d.root, d.stems, subset=v.subset, split=v.split)
    if v.max_tracks:
        tracks = tracks[: v.max_tracks]
    scores = []
    was_training = model.training
    model.eval()
    for track in tracks:
        refs = np.stack([track.read(s) for s in d.stems])
        mix = refs.sum(0)  # the stems' sum, as in training (not a mixture file)
        if v.max_seconds:
            n = int(v.max_seconds * track.sample_rate)
            mix, refs = mix[:, :n], refs[:, :, :n]
        idx = [list(d.stems).index(s) for s in recipe.model_stems]
        est = separate_tensor(
            model,
            torch.from_numpy(np.ascontiguousarray(mix)),
            overlap=v.overlap,
            batch_size=v.batch_size,
        )
        scores.append(sdr(refs[idx], est.numpy()))
    model.train(was_training)
    return float(np.mean(scores))


class _Log:
    """CSV log (and TensorBoard when installed) written by the main process."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "seconds", "val_sdr")

    def __init__(self, path: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if path.exists():  # keep only rows up to the checkpoint resumed from: a killed run
            with open(path, newline="") as f:  # logged steps past it, which now run again
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write(path, text.getvalue().encode())
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:
            pass

    def row(self, **values: float) -> None:
        if not self.enabled:
            return
        self.writer.writerow(values)
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if k != "step":
                    self.tb.add_scalar(k, v, values["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _write_yaml(path: Path, data: dict) -> None:
    import yaml

    atomic_write(path, yaml.safe_dump(data, sort_keys=False).encode())


def train(
    recipe: Recipe,
    *,
    resume: bool = False,
    force: bool = False,
    stop_at: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run a recipe; returns the final trainer state (step, best_sdr, …).

    An `output_dir` that holds an earlier run is refused unless `resume` (continue it) or
    `force` (replace it). `progress` gets the progress lines (see `Trainer.run`).
    """
    # Every process checks before any writes (joining the process group is a barrier).
    main = int(os.environ.get("RANK", "0")) == 0
    prepare_run_folder(Path(recipe.output_dir), resume=resume, force=force, main=main)
    trainer = Trainer(recipe, resume=resume)
    try:
        return trainer.run(stop_at=stop_at, progress=progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
