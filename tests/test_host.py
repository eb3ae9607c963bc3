"""The host allocator settings of the `deepclust` command (deepclust/host.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest

from deepclust import host
from deepclust.host import MMAP_THRESHOLD, TRIM_THRESHOLD, tune_allocator

GLIBC_64BIT = platform.libc_ver()[0] == "glibc" and sys.maxsize > 2**32
TRIM = f"M_TRIM_THRESHOLD={TRIM_THRESHOLD}"
MMAP = f"M_MMAP_THRESHOLD={MMAP_THRESHOLD}"
# the opt-out and the user's own settings, cleared where a test needs the defaults
ALLOCATOR_VARIABLES = (
    "DEEPCLUST_TUNE_MALLOC",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "GLIBC_TUNABLES",
)

# A child that mallocs three 24 MiB blocks at every "step", writes every page and frees them, as a CPU training
# step does with its activations, and counts the page faults per step once the heap has settled, with or without
# tune_allocator first. (PyTorch's own allocations, which go through posix_memalign, fault less regularly; the
# training steps are measured in benchmarks/notes/2026-12-03-page-faults.md.)
ALLOCATION_CYCLES = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    from deepclust.host import tune_allocator

    libc = ctypes.CDLL(None)
    libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: the heap in 4 KiB pages, whatever the host's THP policy
    applied = tune_allocator() if sys.argv[1] == "tuned" else []
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    SIZE = 24 * 2**20

    def step():
        blocks = [libc.malloc(SIZE) for _ in range(3)]
        for block in blocks:
            ctypes.memset(block, 1, SIZE)
        for block in blocks:
            libc.free(block)

    for _ in range(4):  # the heap settles here, tuned or not
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    print(json.dumps({"pages": 3 * SIZE // 4096, "applied": applied, "faults_per_step": faults}))
    """
)


def _allocation_cycles(mode: str) -> dict[str, Any]:
    env = dict(os.environ)
    for name in ALLOCATOR_VARIABLES:
        env.pop(name, None)
    env.pop("LD_PRELOAD", None)  # another allocator (jemalloc, tcmalloc) would take the calls
    result = subprocess.run(
        [sys.executable, "-c", ALLOCATION_CYCLES, mode], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC_64BIT, reason="glibc's malloc on a 64-bit system")
def test_tuned_allocator_keeps_freed_activations_without_page_faults() -> None:
    untuned, tuned = _allocation_cycles("untuned"), _allocation_cycles("tuned")
    assert tuned["applied"] == [TRIM, MMAP]
    assert untuned["faults_per_step"] > untuned["pages"] / 2, untuned  # glibc gives the freed blocks back
    assert tuned["faults_per_step"] < tuned["pages"] / 20, tuned


@pytest.mark.skipif(not GLIBC_64BIT, reason="glibc's malloc on a 64-bit system")
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DEEPCLUST_TUNE_MALLOC", "0", []),
        ("MALLOC_TRIM_THRESHOLD_", "131072", [MMAP]),
        ("MALLOC_MMAP_THRESHOLD_", "131072", [TRIM]),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1", [MMAP]),
        ("GLIBC_TUNABLES", "glibc.pthread.rseq=0", [TRIM, MMAP]),  # a tunable of something else
    ],
)
def test_the_users_own_settings_win(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: list[str]
) -> None:
    for variable in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(name, value)
    assert tune_allocator() == expected


class _FakeMallopt:
    def __init__(self, refused: int) -> None:
        self.refused = refused

    def __call__(self, parameter: int, value: int) -> int:
        return 0 if parameter == self.refused else 1


def test_a_missing_or_refusing_mallopt_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    monkeypatch.delenv("DEEPCLUST_TUNE_MALLOC", raising=False)
    monkeypatch.setattr(host.sys, "platform", "linux")
    monkeypatch.setattr(host, "applied_settings", [])
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a C library without mallopt (musl)
    assert tune_allocator() == []
    refusing = SimpleNamespace(mallopt=_FakeMallopt(refused=host.M_MMAP_THRESHOLD))
    monkeypatch.setattr(ctypes, "CDLL", lambda name: refusing)
    assert tune_allocator() == [TRIM]  # a glibc that refuses one value (32-bit: 32 MiB is too much)
    assert host.applied_settings == [TRIM]  # what the run's log reports

    def no_dlopen(name: object) -> None:
        raise OSError("dlopen is not supported")

    monkeypatch.setattr(ctypes, "CDLL", no_dlopen)
    assert tune_allocator() == []


def test_the_command_tunes_the_allocator_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import deepclust.cli

    calls: list[str] = []
    parse_args = deepclust.cli.parse_args
    monkeypatch.setattr(deepclust.cli, "tune_allocator", lambda: calls.append("tuned") or [])
    monkeypatch.setattr(deepclust.cli, "parse_args", lambda argv: calls.append("parsed") or parse_args(argv))
    assert deepclust.cli.main(["datasets"]) == 0
    assert calls == ["tuned", "parsed"]
