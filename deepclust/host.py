"""Host memory settings for the ``deepclust`` command: fewer page faults in CPU training.

A CPU training step frees its activations and allocates them again at the next step. With glibc's default
settings the heap keeps growing into fresh pages while the freed blocks wait to be merged, and the top of the
heap goes back to the kernel (trimming), so a step touches thousands of pages for the first time: one page fault
each. ``tune_allocator`` keeps freed memory in the process (``M_TRIM_THRESHOLD`` at its largest value, 2 GiB)
and serves blocks up to 32 MiB, the largest threshold glibc accepts, from the heap (``M_MMAP_THRESHOLD``), so
that after the first steps a step reuses its pages. The price is a resident size that stays at the largest
step's.

Only the command's entry point (``deepclust.cli.main``) does this, never ``import deepclust``: a library must not
change the allocator of the program that imports it. Settings the user made in the environment win, each on its
own (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, or ``glibc.malloc.trim_threshold`` and
``glibc.malloc.mmap_threshold`` in ``GLIBC_TUNABLES``), and ``DEEPCLUST_TUNE_MALLOC=0`` turns it off. The run's
log names what was applied (``host_allocator`` in its ``start`` event). The measurements, and transparent huge
pages, which did not help: benchmarks/notes/2026-12-03-page-faults.md.
"""

from __future__ import annotations

import os
import sys

# glibc's mallopt parameters (malloc.h), each with the environment settings that make it the user's choice
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit systems (HEAP_MAX_SIZE / 2)
SETTINGS = (
    (
        "M_TRIM_THRESHOLD",
        M_TRIM_THRESHOLD,
        TRIM_THRESHOLD,
        "MALLOC_TRIM_THRESHOLD_",
        "glibc.malloc.trim_threshold",
    ),
    (
        "M_MMAP_THRESHOLD",
        M_MMAP_THRESHOLD,
        MMAP_THRESHOLD,
        "MALLOC_MMAP_THRESHOLD_",
        "glibc.malloc.mmap_threshold",
    ),
)

# What tune_allocator applied in this process, for the run's log.
applied_settings: list[str] = []


def tune_allocator() -> list[str]:
    """Apply the settings above to this process; returns the ones this call applied (none where another C
    library than glibc runs, ctypes is missing, the user opted out or made the setting). Never raises."""
    if os.environ.get("DEEPCLUST_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return []
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # musl and other C libraries have none: AttributeError
    except (ImportError, OSError, AttributeError):
        return []
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    applied = [
        f"{name}={value}"
        for name, parameter, value, variable, tunable in SETTINGS
        if variable not in os.environ and tunable not in tunables and mallopt(parameter, value) == 1
    ]
    applied_settings.extend(setting for setting in applied if setting not in applied_settings)
    return applied
