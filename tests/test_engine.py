"""The training loop: run directory contents, exact resume, SIGKILL + resume, divergence, time budget, collapse."""

from __future__ import annotations

import itertools
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from helpers import train_interrupted
from omegaconf import DictConfig, OmegaConf
from test_datasets import write_stl10
from test_host import GLIBC_64BIT, MMAP, TRIM

from deepclust.config import build_config
from deepclust.data import ArrayDataset
from deepclust.data.batches import TrainBatches
from deepclust.engine import trainer as trainer_module
from deepclust.engine.fabric_setup import fabric_settings
from deepclust.engine.monitor import Monitor
from deepclust.engine.optim import LARS, build_optimizer, lr_at
from deepclust.engine.trainer import Trainer, TrainingDiverged, train
from deepclust.errors import ConfigError
from deepclust.evaluation import evaluate_clustering
from deepclust.evaluation.readout import (
    ReadoutConfig,
    compute_readouts,
    extract,
    feature_spread,
    precision_autocast,
)
from deepclust.methods import Batch, method_class
from deepclust.runs.run_dir import RunDir

TINY = [
    "model.width=8",
    "optim.batch_size=64",
    "train.log_every_steps=1",
    "train.progress=false",
    "train.precision=32",
    "kmeans.n_init=1",
]


def tiny_config(method: str = "byol", *extra: str) -> DictConfig:
    return build_config(method=method, dataset="digits", overrides=[*TINY, *extra])


def train_steps(run: RunDir) -> dict[int, float]:
    """step -> loss of the ``train`` events after the last (re)start."""
    events = run.read_log()
    starts = [i for i, e in enumerate(events) if e["event"] in ("start", "resume")]
    return {e["step"]: e["loss"] for e in events[starts[-1] :] if e["event"] == "train"}


def test_lr_schedule_and_lars_by_hand() -> None:
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(50, 100, 0, 2.0, schedule="constant") == 2.0
    # over a time budget: the cosine follows the share of the budget used, not the step; warm-up stays in steps
    assert lr_at(5, 100, 0, 1.0, progress=0.5) == pytest.approx(0.5)
    assert lr_at(5, 100, 10, 1.0, progress=0.9) == pytest.approx(0.6)
    assert lr_at(99, 100, 0, 1.0, progress=1.2, min_lr_ratio=0.1) == pytest.approx(0.1)
    # LARS: w = [3, 4] (‖w‖ = 5), g = [0, 1] (‖g‖ = 1), η = 0.001, lr 1, no momentum history:
    # step = lr · η · ‖w‖/‖g‖ · g = 0.005 · g
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([0.0, 1.0])
    LARS([weight], lr=1.0, momentum=0.9).step()
    torch.testing.assert_close(weight.detach(), torch.tensor([3.0, 3.995]))


@pytest.mark.parametrize(("lr", "eta", "clip"), [(0.5, 0.001, False), (0.01, 0.02, True)])
def test_lars_follows_its_update_rule_tensor_by_tensor(lr: float, eta: float, clip: bool) -> None:
    """The multi-tensor step against the rule written per tensor, over steps with momentum history, weight
    decay, an excluded group, a weight that starts at zero (trust 1) and a parameter whose gradient appears late;
    with LARC's clipping (solo-learn's recipe), on a tensor that is clipped and one that is not."""
    torch.manual_seed(0)
    shapes = [(5, 3), (4,), (6, 2), (7,)]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    params[1].data.zero_()
    params[2].data.mul_(0.1)  # η‖w‖/‖g‖ below lr: not clipped
    reference = [p.detach().clone() for p in params]
    momentum, decay = 0.9, 1e-2
    optimizer = LARS(
        [{"params": params[:3]}, {"params": params[3:], "lars_exclude": True, "weight_decay": 0.0}],
        lr=lr, momentum=momentum, weight_decay=decay, trust_coefficient=eta, clip=clip,
    )  # fmt: skip
    clipped: set[bool] = set()
    buffers: list[torch.Tensor | None] = [None] * len(params)
    for step in range(4):
        grads = [torch.randn(shape) for shape in shapes]
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            param.grad = None if (i == 2 and step < 2) else grad.clone()
        optimizer.step()
        for i, grad in enumerate(grads):
            if i == 2 and step < 2:
                continue
            w = reference[i]
            if i < 3:  # LARS group: decay, then the trust ratio η‖w‖/‖g‖ when both norms are positive
                grad = grad + decay * w
                if w.norm() > 0 and grad.norm() > 0:
                    trust = eta * w.norm() / grad.norm()
                    if clip:
                        clipped.add(bool(trust > lr))
                        trust = min(trust / lr, 1.0)
                    grad = grad * trust
            previous = buffers[i]
            buffers[i] = grad.clone() if previous is None else momentum * previous + grad
            reference[i] = w - lr * buffers[i]
        for param, expected in zip(params, reference, strict=True):
            torch.testing.assert_close(param.detach(), expected)
    assert clipped == ({True, False} if clip else set())


def test_lars_settings_reach_the_optimiser() -> None:
    """solo-learn's CIFAR recipe (η 0.02, clipped) in byol/cifar10.yaml; the ImageNet recipes keep η 0.001."""
    weight = [torch.nn.Parameter(torch.ones(2, 2))]
    cifar = build_optimizer([{"params": weight}], build_config(method="byol", dataset="cifar10").optim, 256)
    assert (cifar.param_groups[0]["trust_coefficient"], cifar.param_groups[0]["clip"]) == (0.02, True)
    imagenet = build_optimizer(
        [{"params": weight}], build_config(method="byol", dataset="imagenet10").optim, 256
    )
    assert (imagenet.param_groups[0]["trust_coefficient"], imagenet.param_groups[0]["clip"]) == (0.001, False)
    with pytest.raises(ConfigError, match="lars_trust_coefficient"):
        build_config(method="byol", dataset="cifar10", overrides=["optim.lars_trust_coefficient=0"])


def test_batches_shard_the_permutation_and_restart_mid_epoch() -> None:
    data = ArrayDataset("toy", np.zeros((50, 1, 2, 2), np.uint8), np.zeros(50, np.int64), 2)
    ranks = [TrainBatches(data, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    seen = torch.cat([r.indices(epoch=1).flatten() for r in ranks])
    assert len(ranks[0]) == 6 and seen.unique().numel() == 48  # disjoint, drop_last
    full = [idx for _, _, idx in ranks[0].epoch(1)]
    tail = [idx for _, _, idx in ranks[0].epoch(1, start=4)]
    assert all(torch.equal(a, b) for a, b in zip(full[4:], tail, strict=True))
    assert not torch.equal(ranks[0].indices(1), ranks[0].indices(2))


def test_companions_are_fetched_and_reproducible_after_a_mid_epoch_restart() -> None:
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)  # pixel value = sample index
    data = ArrayDataset("toy", images, None, 4)
    batches = TrainBatches(data, 4, seed=1)

    def random_other(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (indices + torch.randint(1, 40, indices.shape, generator=generator)) % 40

    full = list(batches.epoch(0, companions=random_other))
    for batch_images, companions, indices in full:
        assert torch.equal(batch_images.flatten().long(), indices)
        assert companions is not None and companions.shape == batch_images.shape
        assert not torch.equal(companions, batch_images)
    resumed = list(batches.epoch(0, start=6, companions=random_other))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full[6:], resumed, strict=True))
    assert all(companions is None for _, companions, _ in batches.epoch(0))


def test_training_writes_a_complete_run_directory(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    cfg = tiny_config("cc", "train.epochs=2", "train.eval_every_epochs=1")
    run.save_config(cfg)
    metrics = train(cfg, run)
    for name in ("config.yaml", "log.jsonl", "metrics.json", "assignments.csv", "checkpoints/last.pt"):
        assert (run.path / name).is_file(), name
    assert (run.path / "checkpoints/best.pt").is_file()
    assert metrics["primary"] == "head" and set(metrics["readouts"]) == {"head", "kmeans"}
    clusters, labels, _ = run.read_assignments()
    assert metrics["acc"] == pytest.approx(evaluate_clustering(labels, clusters["head"])["acc"], abs=1e-12)
    events = run.read_log()
    train_events = [e for e in events if e["event"] == "train"]
    assert len(train_events) == 2 * (1797 // 64)
    assert {"loss", "instance", "cluster", "entropy", "lr", "images_per_s", "data_share"} <= set(
        train_events[0]
    )
    assert sum(e["event"] == "eval" for e in events) == 2
    checkpoint = torch.load(run.path / "checkpoints/last.pt", weights_only=True)
    assert checkpoint["loop"]["step"] == 2 * (1797 // 64)
    assert run.precision() == "32-true"


def test_precision_autocast_gives_the_context_a_run_evaluated_under(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert RunDir(tmp_path / "empty").create().precision() is None
    assert precision_autocast("32-true", cpu) is None and precision_autocast(None, cpu) is None
    for precision, dtype in [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)]:
        autocast = precision_autocast(precision, cpu)
        assert autocast is not None
        with autocast():
            assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == dtype


def test_neighbour_vote_and_balanced_read_outs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    cfg = tiny_config("cc", "train.max_steps=3", "readout.neighbour_vote=5", "readout.balanced=true")
    metrics = train(cfg, run)
    balanced = {"head_balanced", "neighbour_vote_balanced"}
    assert set(metrics["readouts"]) == {"head", "kmeans", "neighbour_vote", *balanced}
    assert metrics["primary"] == "head"
    clusters, labels, _ = run.read_assignments()
    assert labels is not None
    for name in ["neighbour_vote", *balanced]:
        assert len(clusters[name]) == len(labels)
    with pytest.warns(UserWarning, match="no soft cluster assignments") as warned:
        metrics = train(
            tiny_config("byol", "train.max_steps=1", "readout.neighbour_vote=5", "readout.balanced=true"),
            RunDir(tmp_path / "b").create(),
        )
    assert {"neighbour_vote", "balanced"} <= {
        str(w.message).split(":")[0].removeprefix("readout.") for w in warned
    }
    assert set(metrics["readouts"]) == {"kmeans"}
    with pytest.raises(ConfigError, match="neighbour_vote"):
        tiny_config("cc", "readout.neighbour_vote=-1")
    with pytest.raises(ConfigError, match="fewer neighbours than the 1797 samples"):
        Trainer(tiny_config("cc", "readout.neighbour_vote=1797"), RunDir(tmp_path / "big").create())


def test_extract_reads_every_image_in_order_in_cpu_sized_batches() -> None:
    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[int] = []

        def readout(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            self.batches.append(len(images))
            return {"features": images.float().flatten(1)}

    images = np.arange(600, dtype=np.uint8).reshape(600, 1, 1, 1)
    method = Recorder()
    features = extract(method, ArrayDataset("toy", images), torch.device("cpu"))["features"]
    assert features[:, 0].tolist() == images.ravel().tolist()
    # 256 on the CPU, where 1024-image activations of the small CNN are mapped afresh for every batch
    assert method.batches == [256, 256, 88]
    method.batches.clear()
    extract(method, ArrayDataset("toy", images), torch.device("cpu"), batch_size=500)
    assert method.batches == [500, 100]


def test_read_outs_by_hand() -> None:
    """Eight samples in two groups of directions, K = 2, and a head that splits neither group cleanly: the four
    head read-outs differ, and each is what its rule gives."""
    angles = np.radians([0, 4, 8, 12, 90, 94, 98, 102])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    probs = np.array(
        [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]],
        dtype=np.float32,
    )
    settings = OmegaConf.create({"n_init": 1, "max_iter": 20, "backend": "sklearn", "normalize": False})
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = compute_readouts(
        {"features": features, "head": probs},
        labels,
        2,
        settings,
        0,
        options=ReadoutConfig(neighbour_vote=3, balanced=True),
    )
    clusters = {name: pred.tolist() for name, pred in result.clusters.items()}
    assert clusters["head"] == [0, 0, 0, 1, 0, 0, 1, 1]
    # sample 3 (12°) takes the mean of samples 0-2, [0.9, 0.1]; sample 6 (98°) that of 4, 5, 7, [0.58, 0.42]
    assert clusters["neighbour_vote"] == [0, 0, 0, 0, 1, 1, 0, 0]
    # balancing moves the least confident samples of the larger cluster: 5 (0.6) for the head, 6 and 7 for the
    # vote, whose clusters then hold four samples each
    assert clusters["head_balanced"] == [0, 0, 0, 1, 0, 1, 1, 1]
    assert clusters["neighbour_vote_balanced"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert result.metrics["kmeans"]["acc"] == 1.0  # the two groups of directions, 0-12° and 90-102°
    assert result.metrics["neighbour_vote_balanced"]["acc"] == 1.0
    assert result.confidence.tolist() == pytest.approx(probs.max(axis=1).tolist())


def test_resume_reproduces_the_uninterrupted_loss_trajectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BYOL (EMA target, cosine schedules): 40 steps straight vs. interrupted at 23, resumed from step 20."""
    settings = ("train.max_steps=40", "train.checkpoint_every_steps=10", "optim.warmup_epochs=0.5")
    straight = RunDir(tmp_path / "straight").create()
    train(tiny_config("byol", *settings), straight)

    interrupted = RunDir(tmp_path / "interrupted").create()
    train_interrupted(tiny_config("byol", *settings), interrupted, 23, monkeypatch)
    checkpoint = torch.load(interrupted.last_checkpoint, weights_only=True)
    assert checkpoint["loop"]["step"] == 20
    train(tiny_config("byol", *settings), interrupted, resume=True)
    assert torch.load(interrupted.last_checkpoint, weights_only=True)["loop"]["steps_per_epoch"] == 1797 // 64

    expected, resumed = train_steps(straight), train_steps(interrupted)
    assert sorted(resumed) == list(range(21, 41))
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), step
    assert json.loads((interrupted.path / "metrics.json").read_text())["step"] == 40


def test_resume_with_another_batch_size_ends_at_the_same_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half of one epoch at batch 32 (56 steps an epoch), resumed at batch 64 (28): the run goes on from the
    middle of the epoch, so --epochs 1 ends after 14 more steps, and the schedule goes on from its middle."""
    settings = (
        "optim.batch_size=32",
        "train.epochs=1",
        "optim.warmup_epochs=0",
        "train.checkpoint_every_steps=14",
    )
    run = RunDir(tmp_path / "run").create()
    train_interrupted(tiny_config("simclr", *settings), run, 28, monkeypatch)
    lr_before = [e["lr"] for e in run.read_log() if e["event"] == "train"][-1]
    train(tiny_config("simclr", *settings, "optim.batch_size=64"), run, resume=True)

    steps = train_steps(run)
    assert sorted(steps) == list(range(29, 43))
    first_lr = next(e["lr"] for e in run.read_log()[::-1] if e["event"] == "train" and e["step"] == 29)
    assert first_lr == pytest.approx(lr_before, rel=0.1)  # the cosine is at half-way, not restarted
    loop = torch.load(run.last_checkpoint, weights_only=True)["loop"]
    assert (loop["step"], loop["epoch"], loop["batch"], loop["steps_per_epoch"]) == (42, 1, 0, 28)


def test_resume_keeps_the_best_checkpoint_of_the_session_before(tmp_path: Path) -> None:
    """last.pt is written before the evaluation that may replace best.pt, so its best score lags: the resumed
    run must take best.pt's, or a worse evaluation replaces the best state."""
    settings = ("model.width=8", "train.epochs=1", "train.eval_every_epochs=1")
    run = RunDir(tmp_path).create()
    train(tiny_config("cc", *settings), run)
    best_path = run.checkpoint_dir / "best.pt"
    best = torch.load(best_path, weights_only=True)
    best["loop"]["best_score"] = 0.99  # a state better than anything the resumed epoch reaches
    torch.save(best, best_path)
    assert torch.load(run.checkpoint_dir / "last.pt", weights_only=True)["loop"]["best_score"] < 0.99
    metrics = train(tiny_config("cc", *settings, "train.epochs=2"), run, resume=True)
    assert metrics["step"] == 2 * (1797 // 64) and metrics["acc"] < 0.99
    assert torch.load(best_path, weights_only=True)["loop"]["step"] == 1797 // 64


def test_compiled_backbone_keeps_the_checkpoint_keys(tmp_path: Path) -> None:
    """train.compile=true compiles the backbone in place: its checkpoints load into an uncompiled model."""
    trainer = Trainer(tiny_config("cc", "train.compile=true"), RunDir(tmp_path).create())
    keys = set(trainer.method.state_dict())
    plain = Trainer(tiny_config("cc"), RunDir(tmp_path / "plain").create())
    assert keys == set(plain.method.state_dict()) and not any("_orig_mod" in key for key in keys)
    # and it is compiled (nn.Module.compile keeps the compiled forward beside the module)
    assert trainer.method.backbone._compiled_call_impl is not None
    assert plain.method.backbone._compiled_call_impl is None


def test_momentum_schedule_runs_on_the_rate_schedule_clock(tmp_path: Path) -> None:
    """Over a time budget BYOL's momentum follows the share of the budget used, as the rate does."""
    budget = ["train.epochs=1000", "train.time_budget_minutes=10", "optim.schedule_over=time"]
    trainer = Trainer(tiny_config("byol", *budget, "params.base_momentum=0.9"), RunDir(tmp_path).create())
    trainer.state.elapsed_s = 0.75 * 600
    images = torch.tensor(trainer.dataset.images[:64])
    trainer._step(Batch(images))
    assert trainer.method.momentum == pytest.approx(1 - 0.1 * (math.cos(math.pi * 0.75) + 1) / 2)
    over_steps = Trainer(
        tiny_config("byol", "train.max_steps=8", "params.base_momentum=0.9"), RunDir(tmp_path / "s").create()
    )
    over_steps.state.step = 2
    over_steps._step(Batch(images))
    assert over_steps.method.momentum == pytest.approx(1 - 0.1 * (math.cos(math.pi * 2 / 8) + 1) / 2)


def cc_on_tiny_stl10(tmp_path: Path) -> Path:
    """Tiny STL-10 binaries under ``tmp_path/data`` (6 train + 6 test labelled images and 8 unlabelled ones,
    96×96) and a cc config file that trains on them with ``data.extra_split=unlabeled``; returns the file."""
    rng = np.random.default_rng(0)
    sizes = {"train": 6, "test": 6, "unlabeled": 8}
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for split, n in sizes.items()}
    labels = {split: rng.integers(0, 10, sizes[split]) for split in ("train", "test")}
    write_stl10(tmp_path / "data" / "stl10_binary", images, labels)
    config_file = tmp_path / "cc-stl10.yaml"
    config_file.write_text("method: cc\ndata:\n  name: stl10\n  extra_split: unlabeled\n")
    return config_file


def test_extra_split_pass_opens_every_epoch_and_resumes_mid_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CC's STL-10 protocol at batch 4: 2 instance-only steps on `unlabeled`, then 3 on train+test, per epoch."""
    config_file = cc_on_tiny_stl10(tmp_path)
    settings = [
        *TINY,
        f"data.root={tmp_path / 'data'}",
        "optim.batch_size=4",
        "train.epochs=2",
        "train.eval_every_epochs=100",
        "train.checkpoint_every_steps=2",
    ]

    def config() -> DictConfig:
        return build_config(config_file=config_file, overrides=settings)

    straight = RunDir(tmp_path / "straight").create()
    metrics = train(config(), straight)
    events = [e for e in straight.read_log() if e["event"] == "train"]
    assert [e["step"] for e in events] == list(range(1, 11))
    extra_steps = [e["step"] for e in events if e.get("split") == "unlabeled"]
    assert extra_steps == [1, 2, 6, 7]
    for event in events:
        assert ("cluster" in event) == (event["step"] not in extra_steps)
        assert event["loss"] == pytest.approx(
            event["instance"] + event.get("cluster", 0) + event.get("entropy", 0)
        )
    assert metrics["step"] == 10
    start = next(e for e in straight.read_log() if e["event"] == "start")
    assert (start["samples"], start["extra_split"], start["extra_samples"]) == (12, "unlabeled", 8)
    assert len((straight.path / "assignments.csv").read_text().splitlines()) == 1 + 12  # the labelled only

    # interrupted in epoch 1's unlabelled pass (checkpoint at step 6 = its first batch), then resumed
    interrupted = RunDir(tmp_path / "interrupted").create()
    train_interrupted(config(), interrupted, 6, monkeypatch)
    loop = torch.load(interrupted.path / "checkpoints/last.pt", weights_only=True)["loop"]
    assert (loop["step"], loop["epoch"], loop["batch"]) == (6, 1, 1)
    train(config(), interrupted, resume=True)
    expected, resumed = train_steps(straight), train_steps(interrupted)
    assert sorted(resumed) == list(range(7, 11))
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), step


def test_sigkill_then_resume_loses_at_most_the_steps_since_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = [sys.executable, "-m", "deepclust.cli", "train", "--method", "cc", "--dataset", "digits"]
    options = [*TINY, "train.epochs=4", "train.checkpoint_every_steps=5"]
    process = subprocess.Popen(
        [*base, "--out", str(out), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    try:
        while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
    finally:  # killed whatever happened: a failed wait must not leave the run going
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert checkpoint.exists(), "no checkpoint was written"
    saved_step = torch.load(checkpoint, weights_only=True)["loop"]["step"]
    logged_before = max(e["step"] for e in RunDir(out).read_log() if e["event"] == "train")
    # lost only the steps since the last checkpoint: at most checkpoint_every_steps, when the kill lands after
    # the next checkpoint's step was logged but before that checkpoint was renamed into place
    assert 0 <= logged_before - saved_step <= 5

    resumed = subprocess.run([*base, "--resume", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    steps = train_steps(RunDir(out))
    assert min(steps) == saved_step + 1 and max(steps) == 4 * (1797 // 64)
    assert json.loads((out / "metrics.json").read_text())["step"] == 4 * (1797 // 64)
    if GLIBC_64BIT:  # the command's allocator settings (deepclust/host.py) are in the run's log
        start = next(e for e in RunDir(out).read_log() if e["event"] == "start")
        assert start["host_allocator"] == [TRIM, MMAP]


@pytest.mark.parametrize(("stop_signal", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_after_the_step_then_resumes(
    stop_signal: signal.Signals, exit_code: int, tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's warning) mid-epoch, far from any periodic checkpoint: the run
    saves the state after its last finished step, exits with 128 + the signal and says how to continue; the
    resume starts at the next step."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "deepclust.cli", "train", "--method", "cc", "--dataset", "digits"]
    options = [
        *TINY,
        "train.epochs=1000",
        "train.eval_every_epochs=1000",
        "train.checkpoint_every_steps=100000",
    ]
    process = subprocess.Popen(
        [*base, "--out", str(out), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a background job of a non-interactive shell (make test &) inherits SIGINT ignored, and Python then
        # keeps ignoring it, as it should for a user who asked for that; the test needs the usual disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 240
        # interrupt inside the second epoch: its end-of-epoch checkpoint (step 28) is then not the last step
        while time.time() < deadline and process.poll() is None:
            try:
                steps = [e["step"] for e in RunDir(out).read_log() if e["event"] == "train"]
            except ValueError:  # a line being written
                steps = []
            if steps and max(steps) > 30:
                break
            time.sleep(0.05)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # a failed test must not leave a 1000-epoch run behind
            process.kill()
            process.wait()
    assert process.returncode == exit_code, stderr
    assert f"continue with: deepclust train --resume {out}" in stderr
    events = RunDir(out).read_log()
    stop = next(e for e in reversed(events) if e["event"] == "stop")
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["loop"]["step"]
    assert stop["reason"] == "interrupted" and saved == stop["step"] > 30
    assert saved == max(e["step"] for e in events if e["event"] == "train")  # no finished step lost

    total = saved + 3
    resumed = subprocess.run(
        [*base, "--resume", str(out), f"train.max_steps={total}"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(train_steps(RunDir(out))) == list(range(saved + 1, total + 1))


def test_non_finite_loss_saves_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path).create()
    cfg = tiny_config("simclr", "train.max_steps=10")
    original_forward = method_class("simclr").forward

    def nan_at_step_3(self: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = original_forward(self, images)
        if self.calls == 3:
            losses = {**losses, "loss": losses["loss"] * math.nan}
        self.calls += 1
        return losses

    monkeypatch.setattr(method_class("simclr"), "calls", 0, raising=False)
    monkeypatch.setattr(method_class("simclr"), "forward", nan_at_step_3)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3"):
        train(cfg, run)
    saved = torch.load(run.path / "checkpoints/last.pt", weights_only=True)
    assert saved["loop"]["step"] == 3
    assert any(e["event"] == "diverged" for e in run.read_log())
    # the check comes after the backward pass is queued, but before any update: weights and moments stay finite
    tensors = [*saved["method"].values()]
    tensors += [v for state in saved["optimizer"]["state"].values() for v in state.values()]
    assert all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def test_weights_broken_before_the_loss_keep_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that makes the weights infinite (as one at optim.lr=inf did) leaves step 3's loss finite and
    step 4's not. Saving then would put the broken weights over the last good checkpoint, and no --resume could
    get past them: the checkpoint of step 2 must stay."""
    run = RunDir(tmp_path).create()
    Trainer(tiny_config("simclr", "train.max_steps=2"), run).fit()
    good = torch.load(run.last_checkpoint, weights_only=True)
    original_step = Trainer._step

    def breaking_step(self: Trainer, batch: Batch) -> dict[str, torch.Tensor]:
        losses = original_step(self, batch)
        if self.state.step == 3:
            with torch.no_grad():
                next(self.method.parameters()).fill_(math.inf)
        return losses

    monkeypatch.setattr(Trainer, "_step", breaking_step)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 3") as stopped:
        Trainer(tiny_config("simclr", "train.max_steps=10"), run, resume=True).fit()
    assert f"{run.last_checkpoint} was left as it was" in str(stopped.value)
    assert "train.precision=32" not in str(stopped.value)  # the run already trains in fp32
    kept = torch.load(run.last_checkpoint, weights_only=True)
    assert kept["loop"]["step"] == good["loop"]["step"] == 2
    assert all(torch.equal(kept["method"][k], v) for k, v in good["method"].items())


def tick_clock(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.05) -> None:
    """The training loop's clock advances ``seconds`` at every reading: a time budget then ends after the same
    steps on any machine, however loaded."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += seconds
        return now[0]

    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=perf_counter))


def test_time_budget_stops_early_then_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tick_clock(monkeypatch)
    run = RunDir(tmp_path).create()
    metrics = train(tiny_config("simclr", "train.epochs=1000", "train.time_budget_minutes=0.05"), run)
    assert "time budget of 0.05 min reached" in capsys.readouterr().err
    stop = next(e for e in run.read_log() if e["event"] == "stop")
    assert stop["reason"] == "time budget" and stop["step"] < 1000 * (1797 // 64)
    assert metrics["step"] == stop["step"] and (run.path / "assignments.csv").is_file()
    # resuming a run whose budget is spent evaluates it again without training a further step
    again = train(
        tiny_config("simclr", "train.epochs=1000", "train.time_budget_minutes=0.05"), run, resume=True
    )
    assert again["step"] == stop["step"] and again["acc"] == metrics["acc"]
    printed = capsys.readouterr().err
    assert f"has finished training (step {stop['step']:,}); evaluating it again" in printed
    assert "time budget" not in printed  # nothing was trained this time
    stops = [e for e in run.read_log() if e["event"] == "stop"]
    assert [e["step"] for e in stops] == [stop["step"], stop["step"]]
    assert not [e for e in run.read_log() if e["event"] == "train" and e["step"] > stop["step"]]


@pytest.mark.parametrize("over", ["time", "auto"])
def test_schedule_over_the_time_budget_anneals_by_the_budget(
    tmp_path: Path, over: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tick_clock(monkeypatch)
    settings = ["optim.schedule=cosine", "optim.warmup_epochs=0", "optim.lr=0.01", "train.log_every_steps=1"]
    run = RunDir(tmp_path).create()
    budgeted = ["train.epochs=1000", "train.time_budget_minutes=0.05", f"optim.schedule_over={over}"]
    train(tiny_config("simclr", *settings, *budgeted), run)
    lrs = [e["lr"] for e in run.read_log() if e["event"] == "train"]
    # 1000 epochs would take far longer than 3 s of the clock, yet the rate falls from the start to near 0 at the
    # budget
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] < 0.002
    assert all(later <= earlier for earlier, later in itertools.pairwise(lrs))
    with pytest.raises(ConfigError, match="--time-budget"):
        tiny_config("simclr", "optim.schedule_over=time")
    assert tiny_config("simclr", "optim.schedule_over=auto").optim.schedule_over == "auto"  # steps, no budget
    with pytest.raises(ConfigError, match="schedule_over"):
        tiny_config("simclr", "optim.schedule_over=epochs")


def test_collapse_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = method_class("cc")

    def one_cluster(self: Any, features: torch.Tensor) -> torch.Tensor:
        probs = torch.zeros(features.shape[0], self.num_clusters, device=features.device)
        probs[:, 0] = 1.0
        return probs + 0.0 * features.sum()

    monkeypatch.setattr(cls, "cluster_probs", one_cluster)
    run = RunDir(tmp_path).create()
    with pytest.warns(UserWarning, match="one cluster holds 100%"):
        train(tiny_config("cc", "train.max_steps=2"), run)
    assert any(e["event"] == "collapse_warning" for e in run.read_log())
    assert 0.0 < json.loads((run.path / "metrics.json").read_text())["stats"]["feature_spread"] <= 1.0


def test_feature_spread_by_hand() -> None:
    """1 − ‖mean of the unit vectors‖²: orthogonal pairs 1 − ‖(½, ½)‖² = ½; one direction at any scale 0."""
    assert feature_spread(np.array([[2.0, 0.0], [0.0, 5.0]])) == pytest.approx(0.5)
    assert feature_spread(np.array([[3.0, 0.0], [300.0, 0.0]])) == pytest.approx(0.0)
    assert feature_spread(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    # zero rows have no direction: left out, and all-zero features are collapsed, whatever their count
    assert feature_spread(np.array([[3.0, 0.0], [300.0, 0.0], [0.0, 0.0]])) == pytest.approx(0.0)
    assert feature_spread(np.zeros((100, 16))) == 0.0
    assert feature_spread(np.full((100, 16), 1e-13)) == pytest.approx(0.0)


def test_collapse_warning_for_features_that_all_point_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large features with a little noise (a collapsed representation at a scale where raw variance is not
    small) raise the warning too."""
    cls = method_class("simclr")

    def collapsed(self: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = torch.randn(images.shape[0], 16, generator=torch.Generator().manual_seed(0))
        return {"features": 100.0 + 0.01 * noise}

    monkeypatch.setattr(cls, "readout", collapsed)
    run = RunDir(tmp_path).create()
    with pytest.warns(UserWarning, match="all point the same way"):
        train(tiny_config("simclr", "train.max_steps=1"), run)
    warning = next(e for e in run.read_log() if e["event"] == "collapse_warning")
    assert warning["feature_spread"] < 1e-6


def test_unknown_device_and_resume_without_checkpoint_are_user_errors(tmp_path: Path) -> None:
    from deepclust.errors import UserError

    with pytest.raises(UserError, match="unknown device"):
        train(tiny_config("simclr", "device=tpu"), RunDir(tmp_path / "a").create())
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_config("simclr"), RunDir(tmp_path / "b").create(), resume=True)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            train(tiny_config("simclr", "device=cuda"), RunDir(tmp_path / "c").create())


def test_a_gpu_index_the_machine_does_not_have_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda:N` on a machine with one GPU (as CUDA reports it): cuda:0 is taken, anything else is one
    line naming the GPUs there are, not a ValueError from int() or Fabric's own error later."""
    from deepclust.errors import UserError

    def settings(device: str) -> dict[str, Any]:
        flags = {"device": device}
        cfg = build_config(method="simclr", dataset="digits", flags=flags, overrides=["train.precision=32"])
        return fabric_settings(cfg)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen = settings("cuda:0")
    assert chosen["accelerator"] == "cuda" and chosen["devices"] == [0]
    for device in ("cuda:1", "cuda:abc", "cuda:-1", "cuda:"):
        with pytest.raises(
            UserError, match=rf"--device {device}: this machine's CUDA GPUs are cuda:0 to cuda:0"
        ):
            settings(device)


def train_ddp_on_digits(method: str, out: Path, *settings: str) -> subprocess.CompletedProcess:
    """`deepclust train` of ``method`` on digits in two gloo CPU processes (batch 32 each, 3 steps); checks
    that it succeeded."""
    command = [sys.executable, "-m", "deepclust.cli", "train", "--method", method, "--dataset", "digits"]
    options = ["--device", "cpu", "--out", str(out), *TINY, "optim.batch_size=32", "train.devices=2"]
    result = subprocess.run(
        [*command, *options, "train.max_steps=3", *settings], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.timeout(1000)
def test_ddp_on_cpu_with_two_processes_resumes_the_loss_trajectory(tmp_path: Path) -> None:
    """`train.devices=2` on CPU: Fabric launches two gloo processes; rank 0 alone writes the run directory. Every
    rank draws its own augmentations, so each must get its own random state back: 6 steps straight against 3
    steps, then `--resume` to 6. Then one process resumes the two-process run."""
    settings = ("optim.schedule=constant", "train.checkpoint_every_steps=3")
    straight = tmp_path / "straight"
    result = train_ddp_on_digits("simclr", straight, *settings, "train.max_steps=6")
    events = RunDir(straight).read_log()
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert result.stdout.count("ACC") == 1
    assert "Initializing distributed" not in result.stderr  # the trainer names the processes itself

    resumed = tmp_path / "resumed"
    train_ddp_on_digits("simclr", resumed, *settings)
    command = [sys.executable, "-m", "deepclust.cli", "train", "--resume", str(resumed), "train.max_steps=6"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected, again = train_steps(RunDir(straight)), train_steps(RunDir(resumed))
    assert sorted(again) == [4, 5, 6]
    for step, loss in again.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), step

    # resumed by one process: its 6 steps of 64 images are 12 of 32, and one epoch is 56 steps of 32
    overrides = ["train.devices=1", "train.max_steps=null", "train.epochs=1"]
    train(
        build_config(config_file=straight / "config.yaml", overrides=overrides), RunDir(straight), resume=True
    )
    assert sorted(train_steps(RunDir(straight))) == list(range(7, 51))


@pytest.mark.timeout(400)
def test_ddp_extra_split_leaves_the_cluster_head_unused_without_failing(tmp_path: Path) -> None:
    """Two gloo processes, global batch 8: one instance-only step on `unlabeled` (the cluster head gets no
    gradient: DDP must allow unused parameters), then one step on train+test, then the next epoch's first."""
    config_file = cc_on_tiny_stl10(tmp_path)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "deepclust.cli", "train", "--config", str(config_file)]
    options = ["--device", "cpu", "--data-root", str(tmp_path / "data"), "--out", str(out), *TINY]
    settings = ["optim.batch_size=4", "train.devices=2", "train.max_steps=3"]
    result = subprocess.run([*command, *options, *settings], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [e for e in RunDir(out).read_log() if e["event"] == "train"]
    assert [(e["step"], e.get("split")) for e in events] == [(1, "unlabeled"), (2, None), (3, "unlabeled")]


def test_a_method_adds_read_outs_over_the_whole_evaluation_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Method.dataset_readouts`` sees every sample's outputs at once; its read-outs are scored, written and
    may be the primary one."""
    cls = method_class("simclr")
    seen: list[int] = []

    def above_median(self: Any, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = outputs["features"][:, 0]
        seen.append(len(first))
        return {"above_median": (first > np.median(first)).astype(np.int64)}

    monkeypatch.setattr(cls, "dataset_readouts", above_median)
    monkeypatch.setattr(cls, "primary_readout", "above_median")
    run = RunDir(tmp_path).create()
    metrics = train(tiny_config("simclr", "train.max_steps=1"), run)
    assert seen == [1797]
    assert metrics["primary"] == "above_median" and set(metrics["readouts"]) == {"kmeans", "above_median"}
    clusters, _, primary = run.read_assignments()
    assert primary == "above_median" and set(clusters["above_median"].tolist()) == {0, 1}


def test_the_progress_follows_the_time_budget(tmp_path: Path) -> None:
    """With a budget the bar ends with the budget (make demo's 10 minutes end near step 1,340 of 27,300), and its
    line says how much of the budget is used; without one it counts steps."""
    budgeted = Monitor(tiny_config("simclr", "train.time_budget_minutes=10"), RunDir(tmp_path).create(), True)
    budgeted.total_steps = 27_300
    assert budgeted._completed(1_340, 600.0) == pytest.approx(1000)  # full at the end of the budget
    assert budgeted._completed(100, 300.0) == pytest.approx(500)
    assert budgeted._steps_text(100, 300.0) == "step 100/27300, 5.0 of 10 min"
    plain = Monitor(tiny_config("simclr"), RunDir(tmp_path / "plain").create(), True)
    plain.total_steps = 400
    assert plain._completed(100, 300.0) == 100 and plain._steps_text(100, 300.0) == "step 100/400"
