"""The benchmark scripts that summarise finished runs: their tables and their one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from deepclust.engine.run_dir import RunDir

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(tmp_path: Path, name: str, readouts: dict[str, dict[str, float]]) -> Path:
    run = RunDir(tmp_path / name).create()
    run.save_config(OmegaConf.create({"method": "cc"}))
    run.write_metrics(readouts, "head")
    return run.path


def _seed_spread(*runs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "seed_spread.py"), *map(str, runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_seed_spread_gives_mean_std_and_range_per_read_out(tmp_path: Path) -> None:
    first = _run(
        tmp_path,
        "a",
        {"head": {"acc": 0.7, "nmi": 0.6, "ari": 0.5}, "vote": {"acc": 0.75, "nmi": 0.65, "ari": 0.55}},
    )
    second = _run(tmp_path, "b", {"head": {"acc": 0.8, "nmi": 0.6, "ari": 0.3}})
    result = _seed_spread(first, second)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    # sample standard deviation of 0.7 and 0.8 is 0.1 / √2
    assert "| head | 2 | 0.7500 ± 0.0707 (0.7000–0.8000) | 0.6000 ± 0.0000 (0.6000–0.6000) |" in rows[2]
    assert rows[3] == "| vote | 1 | 0.7500 | 0.6500 | 0.5500 |"


def test_seed_spread_rejects_a_directory_that_is_not_an_evaluated_run(tmp_path: Path) -> None:
    unevaluated = RunDir(tmp_path / "c").create()
    unevaluated.save_config(OmegaConf.create({"method": "cc"}))
    for bad in (tmp_path / "missing", tmp_path / "c"):
        result = _seed_spread(bad)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and str(bad) in result.stderr
