"""The `deepclust` command end to end: k-means runs, run directories, evaluate, and one-line user errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepclust.cli import main
from deepclust.evaluation import evaluate_clustering
from deepclust.runs.run_dir import RunDir


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script's code path, in a fresh interpreter (as a user runs it)."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "deepclust.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_kmeans_on_digits_writes_a_complete_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "train", "--method", "kmeans", "--dataset", "digits", "--out", str(out), "kmeans.n_init=3"
    )
    assert result.returncode == 0, result.stderr
    assert "ACC" in result.stdout and str(out) in result.stdout

    for name in ("config.yaml", "metrics.json", "assignments.csv", "log.jsonl"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["primary"] == "kmeans"
    assert set(metrics["readouts"]["kmeans"]) >= {"acc", "nmi", "ari"}
    # k-means on raw digits pixels is well above chance (published demo NMI ≈ 0.6–0.74)
    assert metrics["acc"] > 0.6 and metrics["nmi"] > 0.6

    run = RunDir(out)
    clusters, labels, primary = run.read_assignments()
    assert primary == "kmeans" and labels is not None and len(labels) == 1797
    recomputed = evaluate_clustering(labels, clusters["kmeans"])
    assert recomputed["acc"] == pytest.approx(metrics["acc"], abs=1e-12)
    assert "n_init: 3" in (out / "config.yaml").read_text()

    evaluated = run_cli("evaluate", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{metrics['acc']:.4f}" in evaluated.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "no-such-set"], "unknown dataset"),
        (["train", "--method", "no-such-method"], "unknown method"),
        (["train", "--dataset", "digits", "no.such.key=1"], "unknown configuration key"),
        (
            ["train", "--dataset", "digits", "optim.lr=abc"],
            "override 'optim.lr=abc': Value 'abc' of type 'str' could not be converted to Float",
        ),
        (["train", "--dataset", "digits", "notanoverride"], "key=value"),
        (["train", "--dataset", "digits", "--clusters", "1"], "at least 2"),
        (["train", "--dataset", "digits", "--clusters", "5000"], "more than the 1797 samples"),
        (["train", "--config", "/no/such/file.yaml"], "config file not found"),
        (
            ["train", "--dataset", "folder", "--data-root", "/no/such/dir"],
            "--data-root /no/such/dir is not a directory",
        ),
        (["train", "--method", "simclr", "data.extra_split=test"], "simclr has no instance-level losses"),
        (["train", "--method", "cc", "data.extra_split=all"], "is already the clustered split"),
        (
            ["train", "--method", "cc", "--dataset", "digits", "data.extra_split=unlabeled"],
            "data.extra_split: dataset 'digits' has no split 'unlabeled'",
        ),
        # values out of range fail before training, not as a ZeroDivisionError or a torch error mid-run
        (
            ["train", "--dataset", "digits", "train.log_every_steps=0"],
            "train.log_every_steps must be at least 1",
        ),
        (["train", "--dataset", "digits", "train.devices=0"], "train.devices must be at least 1, got 0"),
        (["train", "--dataset", "digits", "optim.lr=-1"], "optim.lr must be positive"),
        (
            ["train", "--dataset", "digits", "optim.weight_decay=-0.1"],
            "optim.weight_decay must not be negative",
        ),
        (["train", "--dataset", "digits", "optim.momentum=2"], "optim.momentum must be in [0, 1]"),
        (
            ["train", "--method", "cc", "--dataset", "digits", "params.instance_temperature=0"],
            "params.instance_temperature must be positive",
        ),
        (
            ["train", "--method", "simclr", "--dataset", "digits", "params.hidden_dim=0"],
            "params.hidden_dim must be at least 1",
        ),
        (
            ["train", "--method", "byol", "--dataset", "digits", "params.base_momentum=1.5"],
            "params.base_momentum must be in [0, 1]",
        ),
        (
            ["train", "--method", "swav", "--dataset", "digits", "params.num_prototypes=0"],
            "params.num_prototypes must be at least 2, got 0",
        ),
        # infinity passes "> 0", but one step at lr=inf makes the weights infinite
        (["train", "--dataset", "digits", "optim.lr=.inf"], "optim.lr must be finite, got inf"),
        # faiss takes a C int seed: a larger one used to fail in the read-out, after training
        (["train", "--dataset", "digits", "--seed", "3000000000"], "seed must be in [0, 2147483647]"),
        (["train", "--dataset", "digits", "--seed", "-1"], "seed must be in [0, 2147483647]"),
        (["train", "--dataset", "digits", "optim.lr=[1,"], "cannot parse the value (did not find expected"),
        (["train", "--dataset", "digits", "optim.lr=*a"], "cannot parse the value"),
        (["train", "--dataset", "digits", "method=cc"], "choose it with --method"),
        (["train", "--dataset", "digits", "data.name=folder"], "choose it with --dataset"),
        (
            ["train", "--dataset", "digits", "optim={lr: 1}"],
            "'optim' is a section of settings: set them one by one, such as optim.name=...",
        ),
        (["train", "--dataset", "digits", "--name", ""], "must be a plain folder name"),
        (["train", "--dataset", "digits", "--name", "../../x"], "must be a plain folder name"),
        (
            ["train", "--method", "cc", "--dataset", "digits", "augment.image_size=20000"],
            "augment.image_size must be a number of pixels from 1 to 2048",
        ),
        (["evaluate", "/no/such/run"], "run directory not found"),
        (["train", "--resume"], "--resume needs a run directory"),
        (["train", "--seed", "notanint"], "invalid int value"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exited:
        sys.exit(
            main(
                [
                    *args,
                    *(
                        ["--out", str(tmp_path / "r")]
                        if args[:1] == ["train"] and "--resume" not in args
                        else []
                    ),
                ]
            )
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert "Traceback" not in err
    assert message in err, err


def test_bad_yaml_config_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: [1, 2]\n", "section 'data' must be a mapping"),
        ("method: [cc]\n", "method must be a name"),
        ("data:\n  name: 3\n", "data.name must be a name"),
        ("name: ${nope}\n", "cannot resolve the configuration at 'name'"),
        (
            "data:\n  root: ${oc.env:DEEPCLUST_TEST_UNSET}\n",
            "cannot resolve the configuration at 'data.root'",
        ),
        ("train:\n  epochs: 1\n  epochs: 2\n", "found duplicate key epochs (line 3, column 3)"),
        ("method: cc\n", "is a config for method 'cc', not --method kmeans"),
        ("5\n", "must contain a mapping of sections (such as optim:), not the single value 5"),
        ("hello\n", "not the single value 'hello'"),  # OmegaConf alone reads it as {hello: None}
        ("- optim\n", "must contain a mapping of sections (such as optim:), not a list"),
        (
            "optim: 5\n",
            "'optim' is a section of settings (such as optim.name): it takes a mapping of them, not 5",
        ),
        (
            "optim:\n",
            "'optim' is a section of settings (such as optim.name): it takes a mapping of them, not None",
        ),
    ],
)
def test_config_files_of_the_wrong_shape_are_one_line(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    out = tmp_path / "runs" / "r"
    assert (
        main(
            ["train", "--method", "kmeans", "--dataset", "digits", "--config", str(config), "--out", str(out)]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not out.parent.exists()


def test_a_directory_given_as_config_file_is_named_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_an_unexpected_crash_before_the_first_checkpoint_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepclust.engine.kmeans_baseline as kmeans_module

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(kmeans_module, "run_kmeans", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--method", "kmeans", "--dataset", "digits", "--out", str(tmp_path / "runs" / "r")])
    assert not (tmp_path / "runs").exists()


def test_only_the_first_process_of_a_distributed_run_prints_a_user_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["train", "--dataset", "digits", "optim.lr=-1", "--out", str(tmp_path / "r")]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(args) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(args) == 2
    assert capsys.readouterr().err.count("deepclust: error:") == 1


def test_config_file_and_overrides_are_merged(tmp_path: Path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text("method: kmeans\ndata:\n  name: digits\nkmeans:\n  n_init: 2\n  backend: sklearn\n")
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--out", str(out), "--seed", "3", "kmeans.max_iter=50"]) == 0
    )
    saved = RunDir(out).load_config()
    assert (saved.kmeans.n_init, saved.kmeans.backend, saved.kmeans.max_iter, saved.seed) == (
        2,
        "sklearn",
        50,
        3,
    )
    assert saved.data.name == "digits"


def test_overrides_may_come_anywhere_among_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", "kmeans.n_init=2", "--method", "kmeans", "--dataset", "digits", "kmeans.max_iter=50"]
    assert main([*args, "--out", str(out), "--seed", "3", "kmeans.backend=sklearn"]) == 0
    saved = RunDir(out).load_config()
    assert (saved.kmeans.n_init, saved.kmeans.max_iter, saved.kmeans.backend, saved.seed) == (
        2,
        50,
        "sklearn",
        3,
    )
    # an unknown option is still refused in one line, wherever it stands
    with pytest.raises(SystemExit) as exited:
        main([*args, "--no-such-option", "--out", str(tmp_path / "other")])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_finished_runs_are_not_overwritten_and_a_wrong_data_root_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    kmeans = ["train", "--method", "kmeans", "--dataset", "digits", "kmeans.n_init=1", "--out", str(out)]
    assert main(kmeans) == 0
    before = (out / "metrics.json").read_text()
    assert main(kmeans) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    # a data root that does not exist would otherwise fall through to the system's copy of the data
    missing = tmp_path / "nope"
    assert main([*kmeans[:-1], str(tmp_path / "other"), "--data-root", str(missing)]) == 2
    assert main(["datasets", "--data-root", str(missing)]) == 2
    assert capsys.readouterr().err.count(f"--data-root {missing} is not a directory") == 2


def test_a_run_that_never_starts_leaves_no_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing data or a setting refused by the method: no stale run directory (nor the folders above it)."""
    (tmp_path / "nothing").mkdir()  # a data root that exists, without the dataset's files
    data_missing = [
        "train",
        "--method",
        "cc",
        "--dataset",
        "cifar10",
        "--data-root",
        str(tmp_path / "nothing"),
    ]
    assert main([*data_missing, "--out", str(tmp_path / "runs" / "a")]) == 2
    assert "cifar10: files not found, looked in" in capsys.readouterr().err
    refused = ["train", "--method", "cc", "--dataset", "digits", "params.entropy_variant=other"]
    assert main([*refused, "--out", str(tmp_path / "runs" / "b")]) == 2
    assert not (tmp_path / "runs").exists()
    # a folder that was there before is the user's: it stays
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main([*refused, "--out", str(mine)]) == 2
    assert mine.is_dir()
    printed = capsys.readouterr()
    assert printed.err.count("deepclust: error: params.entropy_variant must be one of") == 2
    assert "run directory" not in printed.out + printed.err  # it is never named: it was not kept


def test_evaluate_recomputes_from_assignments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate` reads assignments.csv, not metrics.json: a changed assignment changes the printed ACC."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--out", str(out), "kmeans.n_init=1"]) == 0
    run = RunDir(out)
    _, labels, primary = run.read_assignments()
    assert labels is not None
    run.write_assignments({primary: labels}, primary, labels=labels)  # a perfect clustering
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    assert "1.0000" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,label\n0,1\n", "no 'cluster' column"),
        ("id,label,cluster\n0,1,2\n1,0\n", "line 3: 3 columns expected"),
        ("id,label,cluster\n0,1,x\n", "column 'cluster' holds values that are not integers"),
    ],
)
def test_evaluate_refuses_a_damaged_assignments_file(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--out", str(out), "kmeans.n_init=1"]) == 0
    (out / "assignments.csv").write_text(content)
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_help_on_every_subcommand() -> None:
    described = {"": "Deep image clustering", "datasets": "List every dataset", "train": "Cluster a dataset"}
    for command, description in {**described, "evaluate": "Recompute ACC, NMI and ARI"}.items():
        result = run_cli(*([command] if command else []), "--help")
        assert result.returncode == 0 and "usage: deepclust" in result.stdout
        assert description in " ".join(result.stdout.split()), command  # each page says what it does


def test_datasets_lists_every_dataset_with_status() -> None:
    result = run_cli("datasets")
    assert result.returncode == 0, result.stderr
    for name in ("fashion-mnist", "digits", "cifar10", "cifar100-20", "stl10", "imagenet10", "imagenet-dogs"):
        assert name in result.stdout
    assert "found" in result.stdout and "missing" in result.stdout


def test_assignments_csv_has_ids_labels_and_every_readout(tmp_path: Path) -> None:
    run = RunDir(tmp_path).create()
    run.write_assignments(
        {"head": np.array([1, 0, 1]), "kmeans": np.array([0, 0, 1])},
        "head",
        ids=["a.png", "b.png", "c.png"],
        labels=np.array([1, 0, 0]),
        confidence=np.array([0.9, 0.5, 0.25]),
    )
    lines = (tmp_path / "assignments.csv").read_text().splitlines()
    assert lines[0] == "id,label,cluster,confidence,cluster_kmeans"
    assert lines[1] == "a.png,1,1,0.900000,0"
    run.write_metrics({"head": {"acc": 1.0}, "kmeans": {"acc": 0.5}}, "head")
    clusters, labels, primary = run.read_assignments()
    assert primary == "head"
    assert clusters["kmeans"].tolist() == [0, 0, 1] and labels is not None and labels.tolist() == [1, 0, 0]


def test_kmeans_on_the_features_of_a_trained_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deepclust.data import load_dataset
    from deepclust.evaluation import kmeans
    from deepclust.evaluation.readout import extract
    from deepclust.runs.pretrained import load_run_method

    cc = tmp_path / "cc"
    tiny = [
        "model.width=8",
        "optim.batch_size=64",
        "train.progress=false",
        "train.precision=32",
        "kmeans.n_init=1",
    ]
    assert (
        main(["train", "--method", "cc", "--dataset", "digits", "--out", str(cc), "train.max_steps=2", *tiny])
        == 0
    )
    out = tmp_path / "kmeans"
    settings = [f"kmeans.features={cc}", "kmeans.normalize=true", "kmeans.n_init=2"]
    assert main(["train", "--method", "kmeans", "--dataset", "digits", "--out", str(out), *settings]) == 0
    assert "L2-normalised" in capsys.readouterr().out
    clusters, _, primary = RunDir(out).read_assignments()
    # the same clustering as k-means on the run's evaluation features, L2-normalised
    dataset = load_dataset("digits")
    method = load_run_method(str(cc), dataset.image_shape, setting="test", data=RunDir(cc).load_config().data)
    # in the memory format it was trained in (train.channels_last): under bf16 the features depend on it
    convs = [module for module in method.modules() if isinstance(module, torch.nn.Conv2d)]
    assert not convs[-1].weight.is_contiguous()  # more than one input channel: the two formats differ
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    features = extract(method, dataset, torch.device("cpu"))["features"]
    expected = kmeans(features, 10, n_init=2, normalize=True).labels
    assert primary == "kmeans" and np.array_equal(clusters["kmeans"], expected)

    capsys.readouterr()
    for i, (source, message) in enumerate(
        ((tmp_path / "no-run", "run directory not found"), (out, "no trained"))
    ):
        args = ["train", "--method", "kmeans", "--dataset", "digits", f"kmeans.features={source}"]
        assert main([*args, "--out", str(tmp_path / f"bad{i}")]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("deepclust: error: kmeans.features: ") and message in last


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not a checkpoint"),
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(path.read_bytes()[:2000]),  # cut short
        lambda path: torch.save([1, 2], path),  # a valid file that is not a checkpoint
    ],
    ids=["garbage", "empty", "truncated", "not-a-dict"],
)
def test_a_damaged_checkpoint_is_one_line_and_exit_2(
    damage: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "cc"
    settings = ["model.width=8", "optim.batch_size=64", "train.progress=false", "train.max_steps=2"]
    assert main(["train", "--method", "cc", "--dataset", "digits", "--out", str(run), *settings]) == 0
    damage(run / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("deepclust: error: cannot read checkpoint ") and "last.pt" in err, err


def test_a_checkpoint_of_the_wrong_layout_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Readable files that this loop did not write: no KeyError or TypeError from deep inside the resume."""
    run = tmp_path / "cc"
    settings = ["model.width=8", "optim.batch_size=64", "train.progress=false", "train.max_steps=2"]
    assert main(["train", "--method", "cc", "--dataset", "digits", "--out", str(run), *settings]) == 0
    path = run / "checkpoints" / "last.pt"
    good = torch.load(path, weights_only=True)
    for checkpoint, message in (
        ({"a": 1}, "not a deepclust training checkpoint (no 'method')"),
        ({**good, "method": 3}, "does not fit this configuration"),
        ({**good, "loop": {**good["loop"], "unknown": 1}}, "its loop state is not this version's"),
    ):
        torch.save(checkpoint, path)
        capsys.readouterr()
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err


def test_deepclust_warnings_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning of deepclust's own (here: a file that is not an image) reads as one line, without Python's
    file:line prefix and source line."""
    from PIL import Image

    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "cache"))

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    result = run_cli(
        "train", "--dataset", "folder", "--data-root", str(images), "--clusters", "2",
        "--out", str(tmp_path / "run"), "kmeans.n_init=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "broken.jpg" in line]
    assert len(warning) == 1 and warning[0].startswith("deepclust: warning: skipped 1 unreadable"), (
        result.stderr
    )
    assert "UserWarning" not in result.stderr


def test_resume_refuses_settings_the_checkpoint_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume whose overrides reshape the model or swap the optimiser is one line and exit 2, and leaves the
    run's config.yaml as it was, so that a plain --resume still works afterwards."""
    run = tmp_path / "cc"
    settings = ["model.width=8", "optim.batch_size=64", "train.progress=false", "train.max_steps=2"]
    assert main(["train", "--method", "cc", "--dataset", "digits", "--out", str(run), *settings]) == 0
    saved = (run / "config.yaml").read_text()
    for override, message in (
        ("model.width=16", "does not fit this configuration (size mismatch for backbone"),
        ("params.num_heads=3", "does not fit this configuration (Missing key(s)"),
        ("optim.name=sgd", "optim.name=sgd differs from the resumed run's adam"),
        ("method=simclr", "choose it with --method"),
        # the run would go on with another dataset and overwrite its labelled results
        ("data.name=folder", "choose it with --dataset"),
        ("--config=" + str(run / "config.yaml"), "--config cannot be used with --resume"),
        ("--out=" + str(tmp_path / "elsewhere"), "a resumed run stays where it is"),
    ):
        capsys.readouterr()
        assert main(["train", "--resume", str(run), override]) == 2, override
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
        assert (run / "config.yaml").read_text() == saved
    assert main(["train", "--resume", str(run), "train.max_steps=3"]) == 0
    assert "max_steps: 3" in (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("")
    assert main(["train", "--resume", str(run)]) == 2
    assert "config.yaml is damaged: it names no method" in capsys.readouterr().err


def test_an_out_path_that_cannot_be_a_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, message in (
        (blocker, "a file of that name is in the way"),
        (blocker / "run", "Not a directory"),
    ):
        capsys.readouterr()
        assert main(["train", "--method", "cc", "--dataset", "digits", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"deepclust: error: cannot create run directory {out}: {message}", err


def test_a_full_disk_mid_run_is_one_line_and_the_last_checkpoint_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second checkpoint's write fails half-way (ENOSPC): exit 1 with one line that names the file and the
    resume command, no half-written file left behind, and the first checkpoint resumes the run to its end."""
    run = tmp_path / "cc"
    settings = ["model.width=8", "optim.batch_size=64", "train.progress=false", "train.max_steps=4"]
    settings += ["train.log_every_steps=1", "train.checkpoint_every_steps=2"]
    save = torch.save
    writes = []

    def disk_fills_up(state: Any, handle: Any) -> None:
        writes.append(state["loop"]["step"])
        if len(writes) == 2:
            handle.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write: no file named
        save(state, handle)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    command = ["train", "--method", "cc", "--dataset", "digits", "--out", str(run), *settings]
    assert main(command) == 1
    err = capsys.readouterr().err.strip()  # the run's start lines, then the error
    assert err.count("deepclust: error:") == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"deepclust: error: cannot write {run / 'checkpoints' / 'last.pt'}: No space left on device; the last "
        f"checkpoint is intact: continue with: deepclust train --resume {run}"
    )
    assert writes == [2, 4]
    assert [path.name for path in (run / "checkpoints").iterdir()] == ["last.pt"]
    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--resume", str(run)]) == 0
    events = RunDir(run).read_log()
    resumed = next(i for i, e in enumerate(events) if e["event"] == "resume")
    assert events[resumed]["step"] == 2
    assert [e["step"] for e in events[resumed:] if e["event"] == "train"] == [3, 4]
