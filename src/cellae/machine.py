"""The machine this process runs on: its cores, its GPUs, and glibc's allocator.

Cores are the ones this process may run on (its affinity, which a job scheduler or
``cellae sweep --jobs`` may narrow), never the machine's total; every pool cellae sizes
(decoding workers, t-SNE threads, CPU devices, side-by-side shares) counts them here.

The allocator: glibc is told to keep the memory PyTorch frees for the next batch. On the CPU
every activation of a batch is a fresh tensor of tens of megabytes (a 32-channel 64 px map of
128 images is 67 MB). glibc serves blocks that large straight from the kernel (mmap) and
returns them on free (munmap), so each step faults in hundreds of megabytes of fresh zeroed
pages, and the next step does it again. Told to serve every block from its heap and to keep up
to ``KEEP_UP_TO`` of free memory there, glibc hands the same pages back batch after batch.
Measured on 2 CPU cores, the default AE at 64 px: a training step (batch 128) 0.67-0.75 s ->
0.49-0.50 s, an evaluation forward pass (batch 256) 0.52-0.60 s -> 0.33-0.34 s (three runs
each; ``benchmarks/run.py`` keeps the training figure as a row).

It is the glibc side of what PyTorch's CPU tuning guides do by preloading jemalloc or
tcmalloc, without a library to install. Nothing is done where the user has chosen otherwise:
``CELLAE_SYSTEM_MALLOC`` set, glibc's own ``MALLOC_*_`` variables set, or another allocator
preloaded. The price: the process keeps up to ``KEEP_UP_TO`` of freed memory instead of
returning it, which a training or evaluation process reuses at its next batch.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

OPT_OUT = "CELLAE_SYSTEM_MALLOC"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO = 1 << 30
# glibc's environment variables for the same settings: set, they are the user's choice
GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                   "GLIBC_TUNABLES")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def usable_cores() -> list[int]:
    """The numbers of the cores this process may run on, in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """How many cores this process may run on."""
    return len(usable_cores())


def can_pin_cores() -> bool:
    """Whether a process can be given its own cores (an affinity) here."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def gpu_count() -> int:
    """The CUDA GPUs this process sees; 0 without torch's CUDA (torch is imported only here)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (see the module's text); whether it was done."""
    if os.environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))


def glibc_defaults() -> None:
    """glibc's default values back (for a benchmark that measures the difference)."""
    mallopt = _glibc_mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_MAX, 65536)
        mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt`` in this process, or None elsewhere (musl's does nothing)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt
