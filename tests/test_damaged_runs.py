"""Run directories damaged by hand, by a full disk or by a kill: one line on stderr and exit 2, never a traceback.

A k-means digits run is trained once per module and copied for each test; the deep runs that ``kmeans.features``
reads are faked (a ``cc`` config, a start event and a checkpoint), since their loading fails before any weights
would be used.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from deepclust.cli import main
from deepclust.config import build_config, to_yaml
from deepclust.runs.run_dir import RunDir


@pytest.fixture(scope="module")
def kmeans_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("template") / "kmeans"
    assert main(["train", "--dataset", "digits", "--out", str(out), "kmeans.n_init=1"]) == 0
    return out


@pytest.fixture
def kmeans_run(kmeans_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the finished k-means run, free to damage."""
    return Path(shutil.copytree(kmeans_template, tmp_path / "run"))


def fake_cc_run(path: Path, checkpoint: object) -> Path:
    """The files ``kmeans.features`` reads from a trained run, with ``checkpoint`` as ``checkpoints/last.pt``."""
    run = RunDir(path).create()
    run.save_config(build_config(method="cc", dataset="digits"))
    run.log("start", method="cc", num_clusters=10)
    torch.save(checkpoint, run.last_checkpoint)
    return path


def one_error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2, and return its single stderr line."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("deepclust: error: "), err
    return err.removeprefix("deepclust: error: ")


HEADER = b"id,label,cluster,confidence\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("metrics.json", b"{not json\n", "metrics.json is not valid JSON (line 1 column 2)"),
        ("metrics.json", b"[1, 2]\n", "metrics.json holds a JSON array, not an object of metrics"),
        (
            "metrics.json",
            b'{"primary": ["kmeans"]}\n',
            "metrics.json: 'primary' is not the name of a read-out",
        ),
        ("assignments.csv", HEADER + b"\xff,1,2,\n", "assignments.csv is not a UTF-8 CSV file"),
        ("assignments.csv", bytes(range(256)) * 8, "assignments.csv is not a UTF-8 CSV file"),
        (
            "assignments.csv",
            HEADER + b"0,1,99999999999999999999999,\n",  # past int64
            "assignments.csv: column 'cluster' holds values that are not integers",
        ),
        ("assignments.csv", HEADER, "assignments.csv has no rows"),
    ],
    ids=["metrics-not-json", "metrics-a-list", "primary-a-list", "not-utf8", "binary", "overflow", "no-rows"],
)
def test_evaluate_names_the_damaged_file(
    name: str, content: bytes, message: str, kmeans_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (kmeans_run / name).write_bytes(content)
    assert one_error_line(["evaluate", str(kmeans_run)], capsys) == f"{kmeans_run}/{message}"


def test_a_log_cut_short_by_a_kill_still_reads(tmp_path: Path) -> None:
    """A kill mid-append leaves half a line; the next event (a --resume's) starts on a line of its own, and
    reading skips the broken line wherever it sits."""
    run = RunDir(tmp_path / "run").create()
    run.log("start", precision="32-true", num_clusters=10)
    with open(run.path / "log.jsonl", "a") as handle:
        handle.write('{"event": "tra')
    assert [event["event"] for event in run.read_log()] == ["start"]

    run.log("start", precision="bf16-mixed", num_clusters=10)
    assert [event["event"] for event in run.read_log()] == ["start", "start"]
    assert run.precision() == "bf16-mixed"  # the resume's start event was not glued to the broken line


def test_kmeans_features_refuses_weights_of_another_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint's configuration and K rebuild the method; weights that do not fit it are named in one
    line (the log, cut short here, is not read)."""
    config = to_yaml(build_config(method="cc", dataset="digits"))
    weights = {"backbone.nothing": torch.zeros(1)}
    source = fake_cc_run(tmp_path / "cc", {"method": weights, "config": config, "num_clusters": 10})
    with open(source / "log.jsonl", "a") as handle:
        handle.write('{"event": "tra')
    args = ["train", "--dataset", "digits", f"kmeans.features={source}", "--out", str(tmp_path / "out")]
    assert "does not fit its own configuration (Missing key(s)" in one_error_line(args, capsys)


@pytest.mark.parametrize("checkpoint", [{"a": 1}, {"method": [1, 2]}], ids=["no-method", "method-a-list"])
def test_kmeans_features_refuses_a_checkpoint_without_weights(
    checkpoint: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = fake_cc_run(tmp_path / "cc", checkpoint)
    args = ["train", "--dataset", "digits", f"kmeans.features={source}", "--out", str(tmp_path / "out")]
    assert one_error_line(args, capsys) == (
        f"kmeans.features: {source}/checkpoints/last.pt has no model weights (not a deepclust training checkpoint)"
    )


@pytest.mark.parametrize(
    "save",
    [
        lambda path: torch.save({"method": [1, 2]}, path),
        lambda path: torch.save({"method": {0: torch.zeros(1)}}, path),
    ],
    ids=["method-a-list", "non-string-keys"],
)
def test_scan_refuses_a_pretrained_checkpoint_without_weights(
    save: Callable[[Path], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "other.pt"
    save(checkpoint)
    args = ["train", "--method", "scan", "--dataset", "digits", f"params.pretrained={checkpoint}"]
    err = one_error_line([*args, "--out", str(tmp_path / "out")], capsys)
    assert (
        err == f"params.pretrained: {checkpoint} has no model weights (not a deepclust training checkpoint)"
    )
