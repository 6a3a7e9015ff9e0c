"""The CLI's allocator settings: a large freed CPU block is reused without page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# In a worker thread, as the CLI separates: allocate, touch and free 128 MiB a few times (as the
# chunks of a track do: the heap settles after the first ones, whose alignment padding can leave
# a freed block a little too small), then count the page faults of doing it once more.
PROBE = """
import json, resource, threading
from separator.cli.memory import keep_freed_memory
made = keep_freed_memory()
import torch
out = {}
def work():
    for _ in range(3):
        x = torch.ones(32 * 2**20); del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.ones(32 * 2**20)
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps({"made": made, **out}))
"""


def probe(malloc: str) -> dict:
    # 4 KiB pages (no THP), so that every page of a fresh mapping is one fault
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0", "SEPARATOR_MALLOC": malloc}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    kept = probe("")
    assert kept["made"] is True
    assert kept["faults"] < 1000, kept  # 128 MiB is 32768 pages of 4 KiB


def test_system_malloc_opt_out_leaves_malloc_alone():
    system = probe("system")
    assert system["made"] is False
    assert system["faults"] > 16000, system  # the control: the block was mapped afresh
