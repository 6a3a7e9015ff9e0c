"""The machine line every benchmark prints first (run the scripts as `python benchmarks/X.py`)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(*extra: str) -> str:
    """Platform, CPU, cores, load average, python and torch versions and threads, then `extra`."""
    import torch

    parts = [
        platform.platform(),
        f"{cpu_name()}, {os.cpu_count()} cores",
        f"load {os.getloadavg()[0]:.2f}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        *extra,
    ]
    return "; ".join(parts)
