"""ProPos: pseudo-labels at epoch starts, the scattering term, its optimiser groups and EMA, and its training run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_engine import tiny_config, train_ddp_on_digits, train_interrupted, train_steps
from test_methods import BATCH, images, make_method, step_target_and_check_ema

from deepclust.data import ArrayDataset
from deepclust.engine.optim import build_optimizer, set_lr
from deepclust.engine.trainer import train
from deepclust.errors import ConfigError
from deepclust.losses import byol_loss, prototype_scattering_loss
from deepclust.methods import Batch
from deepclust.models.ema import cosine_momentum
from deepclust.runs.run_dir import RunDir


def toy_dataset(n: int = 40) -> ArrayDataset:
    """``n`` random 8×8 images with labels: enough for k-means into the tests' K = 4 clusters."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    return ArrayDataset("toy", images, rng.integers(0, 4, n), num_classes=4)


def test_pseudo_labels_start_after_the_warm_up_and_switch_on_the_scattering_term() -> None:
    method = make_method(
        "propos",
        "params.warmup_epochs=2",
        "params.latent_std=0",
        "params.cluster_weight=0.7",
        "params.temperature=0.3",
    ).train()
    dataset = toy_dataset()
    assert method.on_epoch_start(dataset, torch.device("cpu"), 1) == {}
    assert not method.clustering
    stats = method.on_epoch_start(dataset, torch.device("cpu"), 2)
    assert set(stats) == {"largest_cluster", "pseudo_label_acc"}
    assert method.clustering and method.training
    labels = method.pseudo_labels
    assert labels.shape == (len(dataset),) and set(labels.tolist()) <= set(range(4))

    indices = torch.arange(BATCH)
    views = [torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    method.augmenter.forward = lambda _images: [v.clone() for v in views]  # type: ignore[method-assign]
    losses = method(Batch(images(), indices))
    assert set(losses) == {"loss", "alignment", "scattering"}
    torch.testing.assert_close(losses["loss"], losses["alignment"] + 0.7 * losses["scattering"])

    # the terms by hand, from the same networks (σ = 0: no noise)
    with torch.no_grad():
        proj = [method.projector(method.backbone(v)) for v in views]
        target = [method.target(v) for v in views]
        pred = [method.predictor(p) for p in proj]
        batch_labels = labels[:BATCH]
        alignment = 0.5 * (byol_loss(pred[0], target[1]) + byol_loss(pred[1], target[0]))
        scattering = 0.5 * (
            prototype_scattering_loss(proj[0], target[1], batch_labels, 4, 0.3)
            + prototype_scattering_loss(proj[1], target[0], batch_labels, 4, 0.3)
        )
    torch.testing.assert_close(losses["alignment"], alignment)
    torch.testing.assert_close(losses["scattering"], scattering)
    losses["scattering"].backward()  # the scattering term alone trains the online projector
    assert method.projector[0].weight.grad.abs().sum() > 0

    with pytest.raises(RuntimeError, match="indices"):
        method(Batch(images()))


def test_reads_out_the_target_projections() -> None:
    """k-means clusters the L2-normalised target projections of the evaluation view, not the online ones (the
    target starts as a copy, so it is moved first)."""
    method = make_method("propos").eval()
    with torch.no_grad():
        for param in method.target.parameters():
            param.add_(0.1 * torch.randn_like(param))
    batch = images()
    view = method.prepare(method.augmenter.eval_view(batch))
    features = method.readout(batch)["features"]
    with torch.no_grad():
        target = F.normalize(method.target(view), dim=1)
        online = F.normalize(method.projector(method.backbone(view)), dim=1)
    torch.testing.assert_close(features, target)
    assert not torch.allclose(features, online, atol=1e-3)


def test_latent_noise_only_once_pseudo_labels_exist() -> None:
    method = make_method("propos", "params.warmup_epochs=1", "params.latent_std=1.0").train()
    views = [torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    method.augmenter.forward = lambda _images: [v.clone() for v in views]  # type: ignore[method-assign]
    indices = torch.arange(BATCH)

    def alignment() -> float:
        # BatchNorm in training mode updates running statistics only, so repeated calls see the same networks
        return method(Batch(images(), indices))["alignment"].item()

    assert alignment() == alignment()  # warm-up: σ = 0
    method.on_epoch_start(toy_dataset(), torch.device("cpu"), 1)
    assert alignment() != alignment()  # σ = 1: fresh noise in every call


def test_reassignment_period_and_pseudo_labels_round_trip_through_the_state_dict() -> None:
    method = make_method("propos", "params.warmup_epochs=1", "params.reassign_every_epochs=2")
    dataset = toy_dataset()
    assert [bool(method.on_epoch_start(dataset, torch.device("cpu"), e)) for e in range(5)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    restored = make_method("propos", "params.warmup_epochs=1")
    assert not restored.clustering
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.pseudo_labels, method.pseudo_labels)
    # the device copy a step looks labels up in follows every new assignment
    indices = torch.tensor([3, 0, 7])
    assert torch.equal(restored._batch_labels(indices, torch.device("cpu")), method.pseudo_labels[indices])
    restored.set_extra_state({"pseudo_labels": torch.arange(len(dataset)) % 4})
    assert restored._batch_labels(indices, torch.device("cpu")).tolist() == [3, 0, 3]


def test_the_predictor_learns_at_its_scaled_rate() -> None:
    method = make_method("propos", "params.predictor_lr_scale=10")
    groups = method.parameter_groups(1e-4)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in method.parameters() if p.requires_grad)
    optimizer = build_optimizer(groups, tiny_config("propos").optim, 16)
    set_lr(optimizer, 0.01)
    predictor = {id(p) for p in method.predictor.parameters()}
    for group in optimizer.param_groups:
        mine = {id(p) for p in group["params"]}
        assert mine <= predictor or not mine & predictor
        assert group["lr"] == pytest.approx(0.1 if mine and mine <= predictor else 0.01)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_target_momentum_schedules(schedule: str) -> None:
    """After an optimiser step the target moves to τ·target + (1 − τ)·online, τ constant (the authors' code) or
    BYOL's cosine schedule: the online weights are perturbed first, since the target starts as their copy."""
    method = make_method("propos", f"params.momentum_schedule={schedule}", "params.base_momentum=0.9")
    online = method._online_encoder()
    with torch.no_grad():
        for param in online.parameters():
            param.add_(torch.randn_like(param))
    assert not math.isclose(cosine_momentum(0.3, 0.9), 0.9)
    step_target_and_check_ema(method, online, 0.9 if schedule == "constant" else cosine_momentum(0.3, 0.9))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("params.momentum_schedule=linear", "params.momentum_schedule must be one of"),
        ("params.temperature=0", "params.temperature must be positive"),
        ("params.reassign_every_epochs=0", "params.reassign_every_epochs must be at least 1"),
    ],
)
def test_bad_parameters_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_method("propos", override)


def test_training_assigns_pseudo_labels_every_epoch_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Digits at batch 64 (28 steps an epoch), warm-up of one epoch, 70 steps: straight, and interrupted at
    step 63 then resumed from the checkpoint of step 60 (inside epoch 2, whose pseudo-labels it restores)."""
    settings = (
        "train.max_steps=70",
        "train.checkpoint_every_steps=10",
        "params.warmup_epochs=1",
        "params.hidden_dim=32",
        "params.projection_dim=16",
    )
    straight = RunDir(tmp_path / "straight").create()
    train(tiny_config("propos", *settings), straight)
    events = straight.read_log()
    starts = [e for e in events if e["event"] == "epoch_start"]
    assert [(e["epoch"], e["step"]) for e in starts] == [(1, 28), (2, 56)]
    trained = [e for e in events if e["event"] == "train"]
    assert all(("scattering" in e) == (e["step"] > 28) for e in trained)

    interrupted = RunDir(tmp_path / "interrupted").create()
    train_interrupted(tiny_config("propos", *settings), interrupted, 63, monkeypatch)
    train(tiny_config("propos", *settings), interrupted, resume=True)
    after_resume = interrupted.read_log()
    after_resume = after_resume[max(i for i, e in enumerate(after_resume) if e["event"] == "resume") :]
    assert not any(e["event"] == "epoch_start" for e in after_resume)  # epoch 2's labels came back
    expected, resumed = train_steps(straight), train_steps(interrupted)
    assert sorted(resumed) == list(range(61, 71))
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], abs=1e-6), step


@pytest.mark.timeout(400)
def test_ddp_pseudo_labels_and_scattering_on_two_cpu_processes(tmp_path: Path) -> None:
    """Two gloo processes run ProPos's DDP path end to end: both cluster the dataset at epoch 0 (rank 0's labels
    broadcast), then train the scattering term over the gathered batch; rank 0 alone logs. (That the gathered
    loss and its gradients equal one process's on the global batch is tests/test_distributed.py's check.)"""
    out = tmp_path / "ddp"
    train_ddp_on_digits(
        "propos", out, "params.warmup_epochs=0", "params.hidden_dim=32", "params.projection_dim=16"
    )
    events = RunDir(out).read_log()
    assert [e["epoch"] for e in events if e["event"] == "epoch_start"] == [0]
    trained = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in trained] == [1, 2, 3]
    assert all(math.isfinite(e["scattering"]) for e in trained)
