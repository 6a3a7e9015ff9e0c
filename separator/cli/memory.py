"""How a CLI process asks for memory: large CPU activations are reused, not faulted in anew.

The models allocate and free many large short-lived activations (a viperx BS-RoFormer's 8 s chunk
holds several 200-400 MB tensors at a time). By default each one is a fresh mapping from the
kernel, and touching it costs a page fault per page: 15-20 % of a CPU forward pass here
(benchmarks/README.md, "Allocator"). Two process-wide settings remove most of it, so they are
made by the command line only, never by importing the library:

- transparent huge pages for torch's CPU allocator (`THP_MEM_ALLOC_ENABLE`, read when torch is
  imported, so this module sets it before anything imports torch);
- glibc's malloc keeping freed memory for reuse (`keep_freed_memory`).

`SEPARATOR_MALLOC=system` leaves glibc's malloc as it is.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_LARGEST = 2**31 - 1  # mallopt takes a C int


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep freed memory for reuse.

    Three mallopt calls: no mmap below 2 GiB (a mapped block goes back to the kernel when freed,
    and its next use faults every page in again), no trimming of the heap's free top, and one
    arena, because separation runs in worker threads and a thread's own arena maps every block
    over 64 MiB regardless of the threshold. The process keeps its peak memory until it exits
    instead of returning it between chunks. Returns whether the settings were made (glibc only;
    once per process; not with `SEPARATOR_MALLOC=system`).
    """
    if os.environ.get("SEPARATOR_MALLOC", "").lower() == "system" or not _is_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, _LARGEST), (_M_TRIM_THRESHOLD, _LARGEST), (_M_ARENA_MAX, 1))
    return all(mallopt(param, value) == 1 for param, value in settings)


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
