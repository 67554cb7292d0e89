"""glibc's malloc set up for a training process: memory a step frees is kept for the next step.

On the CPU, torch takes every tensor's memory from the C allocator. glibc's defaults hand large blocks back to the
kernel when they are freed (``munmap``, or trimming the heap's top), so the next step asks for the same memory again
and the kernel zeroes it page by page: a page fault for every 4 KiB a step touches, with both compute threads waiting
on the kernel. In a fresh job process this cost about 15 % of the default run's FCN step on a 2-core machine (the
figures are in the README, "Speed"). :func:`keep_freed_memory` raises the two thresholds so that blocks up to 32 MiB
come from the heap and freed memory stays in the process; the peak resident memory of a default job rose by about 5 %.

Processes that segbench owns call it: job processes (:func:`segbench.executors.worker.worker_main`, which
zygote-forked jobs run too), ``segbench run`` (where the cost estimate times its steps and ``--in-process`` jobs run),
and the step-time benchmarks, so that "the step alone" is measured with the allocator the jobs use. The Python API
(:func:`segbench.runner.run_comparison` in the caller's process) leaves the caller's allocator as it is: glibc cannot
restore its adaptive defaults once they are set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, which is 32 MiB on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 1 * 2**30


def keep_freed_memory() -> bool:
    """Make glibc serve blocks up to 32 MiB from the heap and keep up to 1 GiB of freed heap memory.

    Returns:
        True if both settings were applied; False where the C library is not glibc (macOS, musl) or refused them,
        which changes only speed, never results.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    applied = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and applied
    log.debug("glibc malloc: mmap threshold 32 MiB, trim threshold 1 GiB (%s)", "applied" if applied else "refused")
    return applied
