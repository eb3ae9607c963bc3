"""The benchmark scripts that summarise finished runs: their tables, their figures and their one-line errors."""

from __future__ import annotations

import importlib.util
import io
import json
import runpy
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from deepclust.config import build_config
from deepclust.data import load_dataset
from deepclust.engine.trainer import train
from deepclust.runs.checkpoint import load_checkpoint
from deepclust.runs.run_dir import RunDir

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(tmp_path: Path, name: str, readouts: dict[str, dict[str, float]]) -> Path:
    run = RunDir(tmp_path / name).create()
    run.save_config(OmegaConf.create({"method": "cc"}))
    run.write_metrics(readouts, "head")
    return run.path


TINY = ["model.width=8", "optim.batch_size=64", "train.progress=false", "kmeans.n_init=1"]


def _tiny_run(
    tmp_path: Path, method: str, *overrides: str, trained: bool = True
) -> tuple[RunDir, dict[str, dict[str, float]]]:
    """A run of ``method`` on digits with a tiny network in ``tmp_path/method``: trained for 3 steps (its
    read-outs returned) or, with ``trained=False``, only configured (no read-outs)."""
    run = RunDir(tmp_path / method).create()
    cfg = build_config(method=method, dataset="digits", overrides=[*TINY, "train.max_steps=3", *overrides])
    run.save_config(cfg)
    return run, train(cfg, run)["readouts"] if trained else {}


def _script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<name>`` with ``args`` as ``python benchmarks/<name>`` would, but in this interpreter: a
    fresh one spends about 10 s importing torch, and these tests run a dozen scripts. Its exit status, standard
    output and standard error come back as from ``subprocess.run``; an uncaught exception fails the test."""
    command = [str(SCRIPTS / name), *map(str, args)]
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv, sys.path[:0] = command, [str(SCRIPTS)]  # what `python script.py` sets up
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            runpy.run_path(command[0], run_name="__main__")
        returncode = 0
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # `raise SystemExit("message")`: Python prints it, status 1
            print(exit_.code, file=stderr)
        returncode = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return subprocess.CompletedProcess(command, returncode, stdout.getvalue(), stderr.getvalue())


def _script_in_fresh_interpreter(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<name>`` with ``args`` in a new Python process, exactly as a user would."""
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_seed_spread_gives_mean_std_and_range_per_read_out(tmp_path: Path) -> None:
    first = _run(
        tmp_path,
        "a",
        {"head": {"acc": 0.7, "nmi": 0.6, "ari": 0.5}, "vote": {"acc": 0.75, "nmi": 0.65, "ari": 0.55}},
    )
    second = _run(tmp_path, "b", {"head": {"acc": 0.8, "nmi": 0.6, "ari": 0.3}})
    result = _script_in_fresh_interpreter("seed_spread.py", first, second)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    # sample standard deviation of 0.7 and 0.8 is 0.1 / √2
    assert rows[2] == (
        "| head | 2 | 0.7500 ± 0.0707 (0.7000–0.8000) | 0.6000 ± 0.0000 (0.6000–0.6000) "
        "| 0.4000 ± 0.1414 (0.3000–0.5000) |"
    )
    assert rows[3] == "| vote | 1 | 0.7500 | 0.6500 | 0.5500 |"


def test_seed_spread_rejects_a_directory_that_is_not_an_evaluated_run(tmp_path: Path) -> None:
    unevaluated = RunDir(tmp_path / "c").create()
    unevaluated.save_config(OmegaConf.create({"method": "cc"}))
    unlabelled = _run(tmp_path, "d", {"head": {}})  # a folder of images without labels
    for bad in (tmp_path / "missing", tmp_path / "c", unlabelled):
        result = _script("seed_spread.py", bad)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and str(bad) in result.stderr


def test_diagnose_run_reports_every_cluster_head_and_the_one_read_out(tmp_path: Path) -> None:
    """A three-head CC run on digits: one entry per head, and the read-out one is the head the run reports."""
    run, _ = _tiny_run(tmp_path, "cc", "params.num_heads=3")
    out = tmp_path / "diagnosis.json"
    result = _script("diagnose_run.py", run.path, "--neighbours", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    diagnosis = json.loads(out.read_text())
    running = load_checkpoint(run.last_checkpoint)["method"]["cluster_heads.running_losses"].tolist()
    assert [head["running_loss"] for head in diagnosis["heads"]] == running
    chosen = [index for index, head in enumerate(diagnosis["heads"]) if head["read_out"]]
    assert chosen == [min(range(3), key=running.__getitem__)]
    read_out = diagnosis["heads"][chosen[0]]
    assert {m: read_out[m] for m in ("acc", "nmi", "ari")} == diagnosis["head"]


def test_diagnose_run_rejects_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    result = _script("diagnose_run.py", tmp_path / "missing")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "missing" in result.stderr


def test_reread_run_repeats_the_runs_read_outs_and_adds_the_requested_ones(tmp_path: Path) -> None:
    # bf16 autocast, as train.precision=auto picks on CPUs with bf16 instructions: the re-read must use it too
    run, trained = _tiny_run(tmp_path, "cc", "train.precision=bf16-mixed")
    result = _script("reread_run.py", run.path, "--neighbour-vote", "5", "--balanced", "--purity", "10", "40")
    assert result.returncode == 0, result.stderr
    reread = json.loads((run.path / "reread.json").read_text())
    readouts = reread["readouts"]
    assert set(readouts) == {"head", "kmeans", "neighbour_vote", "head_balanced", "neighbour_vote_balanced"}
    for name in ("head", "kmeans"):
        assert readouts[name] == trained[name]
    assert reread["neighbour_vote"] == 5 and reread["balanced"] is True and reread["date"]
    assert set(reread["kmeans_purity"]) == {"10", "40"}
    assert reread["kmeans_purity"]["10"] >= trained["kmeans"]["acc"]  # the run's own k-means partition
    assert reread["kmeans_purity"]["40"] > reread["kmeans_purity"]["10"]
    byol, _ = _tiny_run(tmp_path, "byol")
    both = _script("reread_run.py", run.path, byol.path)
    assert both.returncode == 0, both.stderr
    rows = both.stdout.splitlines()
    assert any(row.startswith("| head | 1 | ") for row in rows)
    assert any(row.startswith("| kmeans | 2 | ") for row in rows)
    missing = _script("reread_run.py", tmp_path / "missing")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "missing" in missing.stderr


def test_fresh_heads_trains_new_heads_on_the_frozen_backbone(tmp_path: Path) -> None:
    run, trained = _tiny_run(tmp_path, "cc", "train.precision=bf16-mixed")
    result = _script("fresh_heads.py", run.path, "--views", "3", "--epochs", "2", "--heads", "2")
    assert result.returncode == 0, result.stderr
    record = json.loads((run.path / "fresh_heads.json").read_text())
    # the frozen backbone and the run's own head read as the run's evaluation did
    assert {metric: record["run_head"][metric] for metric in ("acc", "nmi", "ari")} == trained["head"]
    epochs = record["epochs"]["10"]  # digits' ten classes
    assert len(epochs) == 2 and all(len(scores) == 2 for scores in epochs)
    assert all(0.0 <= s["acc"] <= s["purity"] <= 1.0 for scores in epochs for s in scores)
    over = _script(
        "fresh_heads.py", run.path, "--views", "2", "--epochs", "1", "--heads", "1", "--clusters", "20"
    )
    assert over.returncode == 0, over.stderr
    assert list(json.loads((run.path / "fresh_heads.json").read_text())["epochs"]) == ["20"]
    byol, _ = _tiny_run(tmp_path, "byol", trained=False)
    for bad, message in [(tmp_path / "missing", "missing"), (byol.path, "byol run")]:
        failed = _script("fresh_heads.py", bad)
        assert failed.returncode == 2
        assert len(failed.stderr.strip().splitlines()) == 1 and message in failed.stderr


def test_train_speed_times_every_learner(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = _script(
        "train_speed.py", "--dataset", "digits", "--methods", "cc", "byol", "--device", "cpu", "--steps", "2",
        "--windows", "2", "--warmup", "1", "--profile", "2", "--out", out, *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["cc", "byol"]
    for row in rows:
        assert row["batch_size"] == 64 and row["steps"] == 2 and len(row["images_per_s_windows"]) == 2
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0
        assert isinstance(row["page_faults_per_step"], int) and row["page_faults_per_step"] >= 0
        # images/s and ms/step both come from the median window
        assert row["images_per_s"] == pytest.approx(64 / (row["ms_per_step"] / 1000), rel=0.01)
        profile = row["profile"]  # on the CPU: the operations per step, no waits for a device
        assert profile["steps"] == 2 and profile["host_operations_per_step"] > 100
        assert profile["host_waits_per_step"] == {} and profile["device_busy_share"] is None


def test_train_speed_reports_a_broken_learner_and_times_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPTS / "train_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    timed = []

    def fake_time(method: str, *args: object) -> dict[str, object]:
        if method == "byol":
            raise RuntimeError("CUDA error: out of memory")
        timed.append(method)
        row = dict(method=method, precision="32-true", compile=False, batch_size=8, images_per_s=1.0)
        return {
            **row,
            "ms_per_step": 8000.0,
            "page_faults_per_step": 0,
            "setup_and_warmup_s": 0.0,
            "peak_memory_gib": None,
            "profile": None,
        }

    monkeypatch.setattr(module, "time_method", fake_time)
    out = tmp_path / "speed.json"
    assert module.main(["--methods", "cc", "byol", "swav", "--out", str(out)]) == 1
    assert timed == ["cc", "swav"]
    rows = json.loads(out.read_text())["rows"]
    assert rows[1] == {"method": "byol", "error": "RuntimeError: CUDA error: out of memory", "overrides": []}
    assert "byol     failed: RuntimeError" in capsys.readouterr().out


def test_train_speed_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    cases = {
        "unknown key": (["train.no_such_key=1", "--methods", "cc"], "no_such_key"),
        "override taken as a method": (["--methods", "cc", "optim.lr=1"], "unknown method 'optim.lr=1'"),
        "random images of another dataset": (["--random-cifar10", "10", "--dataset", "digits"], "cifar10"),
    }
    for case, (args, message) in cases.items():
        result = _script("train_speed.py", "--device", "cpu", *args)
        assert result.returncode == 2, case
        assert message in result.stderr, (case, result.stderr)
        assert "Traceback" not in result.stderr, case


def test_train_speed_writes_random_images_in_cifar10_format(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPTS / "train_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = module.write_random_cifar10(tmp_path, 60)
    dataset = load_dataset("cifar10", root=root)
    assert len(dataset) == 60 and dataset.image_shape == (3, 32, 32) and dataset.images.dtype == np.uint8
