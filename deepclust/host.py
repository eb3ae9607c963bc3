"""Host memory settings for the ``deepclust`` command: fewer page faults in CPU training.

A CPU training step frees its activations and allocates them again at the next step. With glibc's default
settings the heap keeps growing into fresh pages while the freed blocks wait to be merged, and the top of the
heap goes back to the kernel (trimming), so a step touches thousands of pages for the first time: one page fault
each. On the dev CPU (AVX2) a fault costs about 3 µs, and a CC step on Fashion-MNIST took 2,700 to 20,000 of
them. ``tune_allocator`` keeps freed memory in the process (``M_TRIM_THRESHOLD`` at its largest value, 2 GiB)
and serves blocks up to 32 MiB, the largest threshold glibc accepts, from the heap (``M_MMAP_THRESHOLD``), so
that after the first steps a step reuses its pages. The price is a resident size that stays at the largest
step's. Transparent huge pages for PyTorch's tensors (``THP_MEM_ALLOC_ENABLE=1``) were measured too and made
the same allocation cycle five times slower than these settings alone.

Only the command does this, never ``import deepclust``: a library must not change the allocator of the program
that imports it. Settings the user made in the environment win (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``), and ``DEEPCLUST_TUNE_MALLOC=0`` turns it off. The measurements
are in benchmarks/RESULTS.md ("Page faults on the CPU").
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit systems (HEAP_MAX_SIZE / 2)
USER_MALLOC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def tune_allocator() -> list[str]:
    """Apply the settings above to this process; returns the ones applied (empty where none could be)."""
    if os.environ.get("DEEPCLUST_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return []
    if any(name in os.environ for name in USER_MALLOC_SETTINGS):
        return []
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library's own: glibc, or musl's, which ignores it
    except AttributeError:
        return []
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = []
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        applied.append(f"M_TRIM_THRESHOLD={TRIM_THRESHOLD}")
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
        applied.append(f"M_MMAP_THRESHOLD={MMAP_THRESHOLD}")
    return applied
