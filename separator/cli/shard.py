"""Library-scale runs under torchrun: one shard of the files per rank, and a shared manifest.

    torchrun --nproc_per_node=8 -m separator.cli separate LIBRARY/ -o OUT/ --recursive

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE. Files are sorted by path and
rank r takes every WORLD_SIZE-th from r, so a restarted run gets the same shards; finished
files are skipped ("skipped (exists)"), so a killed run resumes where it stopped. Each rank uses
its local GPU (cuda:LOCAL_RANK) or, on the CPU, its share of the cores. A process group (gloo:
it only carries the final barrier and the failure count) keeps every rank alive until all are
done, since torchrun stops the other ranks as soon as one exits with an error. Every rank
appends one JSON line per file to OUT/manifest.jsonl, under an flock so lines never interleave.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Shard:
    """This process's place in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def take(self, items: list) -> list:
        """This rank's share of `items` (already sorted)."""
        return items[self.rank :: self.world]


def shard_from_env() -> Shard:
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Shard()
    world = int(env["WORLD_SIZE"])
    return Shard(
        int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)),
        int(env.get("LOCAL_WORLD_SIZE", world)),
    )  # fmt: skip


def rank_device(shard: Shard, device: str) -> str:
    """The device this rank uses: its local GPU for auto/cuda, else as given; on the CPU, the
    torch thread count is set to this rank's share of the cores."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    if device in ("auto", "cpu"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // shard.local_world))
    return device


def start(shard: Shard) -> None:
    """Join torchrun's process group (gloo; long timeout: ranks finish hours apart)."""
    import torch.distributed as dist

    if shard.distributed and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(days=7))


def finish(shard: Shard, failures: int) -> int:
    """Wait for every rank; returns the failures of all ranks together."""
    import torch
    import torch.distributed as dist

    if not (shard.distributed and dist.is_initialized()):
        return failures
    total = torch.tensor([failures])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return int(total.item())


def append_record(manifest: Path, record: dict) -> None:
    """Append one JSON line; safe from many processes (O_APPEND, one write, under flock)."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode())
    finally:
        os.close(fd)  # also drops the lock


def stamp(shard: Shard) -> dict:
    """Where and when a manifest record was made."""
    return {"rank": shard.rank, "host": socket.gethostname(), "time": round(time.time(), 3)}
