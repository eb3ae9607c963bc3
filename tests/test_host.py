"""The host allocator settings of the `deepclust` command (deepclust/host.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from deepclust.host import MMAP_THRESHOLD, TRIM_THRESHOLD, USER_MALLOC_SETTINGS, tune_allocator

# A child that mallocs three 24 MiB blocks at every "step", writes every page and frees them, as a CPU training
# step does with its activations, and counts the page faults per step once the heap has settled, with or without
# tune_allocator first. (PyTorch's own allocations, which go through posix_memalign, fault less regularly; the
# training steps are measured in benchmarks/RESULTS.md.)
ALLOCATION_CYCLES = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    from deepclust.host import tune_allocator

    applied = tune_allocator() if sys.argv[1] == "tuned" else []
    libc = ctypes.CDLL(None)
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
    for name in ("DEEPCLUST_TUNE_MALLOC", *USER_MALLOC_SETTINGS):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", ALLOCATION_CYCLES, mode], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_allocator_keeps_freed_activations_without_page_faults() -> None:
    untuned, tuned = _allocation_cycles("untuned"), _allocation_cycles("tuned")
    assert tuned["applied"] == [f"M_TRIM_THRESHOLD={TRIM_THRESHOLD}", f"M_MMAP_THRESHOLD={MMAP_THRESHOLD}"]
    assert untuned["faults_per_step"] > untuned["pages"] / 2, untuned  # glibc gives the freed blocks back
    assert tuned["faults_per_step"] < tuned["pages"] / 20, tuned


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEEPCLUST_TUNE_MALLOC", "0"),
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"),
    ],
)
def test_the_users_own_settings_win(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert tune_allocator() == []


def test_the_command_tunes_the_allocator_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import deepclust.cli

    calls: list[str] = []
    monkeypatch.setattr(deepclust.cli, "tune_allocator", lambda: calls.append("tuned") or [])
    assert deepclust.cli.main(["datasets"]) == 0
    assert calls == ["tuned"]
