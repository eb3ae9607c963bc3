"""The method contract, checked for every registered method: a method added to the registry is tested here
without editing this file, from the small settings it declares (``Method.tiny_settings``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_interrupted
from omegaconf import DictConfig, OmegaConf

from deepclust.config import CONFIG_DIR, build_config
from deepclust.data import ArrayDataset, TrainBatches, dataset_info, load_dataset
from deepclust.engine.trainer import train
from deepclust.methods import METHODS, Batch, Method, TrainingProgress
from deepclust.runs import RunDir
from deepclust.runs.pretrained import build_method

TRAINABLE = sorted(name for name, cls in METHODS.items() if cls.trainable)
# A narrow small CNN on the 8×8 digits.
TINY = [
    "model.backbone=small_cnn",
    "model.width=4",
    "optim.batch_size=64",
    "train.channels_last=false",
    "train.precision=32",
    "train.progress=false",
    "kmeans.n_init=2",
]
PRETEXT = "cc"  # the finished run that methods which start from one start from
K = 10


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def pretext_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run of ``PRETEXT`` on digits, 150 steps long."""
    run = RunDir(tmp_path_factory.mktemp("pretext") / "run").create()
    cfg = tiny_config(PRETEXT, "train.max_steps=150", "train.eval_every_epochs=1000")
    run.save_config(cfg)
    train(cfg, run)
    return run.path


def tiny_config(name: str, *extra: str, pretrained: Path | None = None) -> DictConfig:
    """A digits configuration of ``name`` with its declared small settings (and the pretext run, when it
    starts from one)."""
    cls = METHODS[name]
    settings = [*TINY, *(cls.tiny_settings or ())]
    if cls.pretrained_setting is not None and pretrained is not None:
        settings.append(f"{cls.pretrained_setting}={pretrained}")
    return build_config(method=name, dataset="digits", overrides=[*settings, *extra])


@pytest.mark.parametrize("name", TRAINABLE)
def test_every_method_declares_its_small_settings(name: str) -> None:
    assert METHODS[name].tiny_settings is not None, f"{name} must declare tiny_settings"
    assert issubclass(METHODS[name], Method)


@pytest.mark.parametrize("name", TRAINABLE)
def test_steps_in_the_loops_order_update_the_weights(
    name: str, digits: ArrayDataset, pretext_run: Path
) -> None:
    """Two steps in the order of the loop (prepare, epoch start, companions, forward, backward, hooks): named
    finite scalar losses, and every parameter that got a non-zero gradient moves."""
    torch.manual_seed(0)
    method = build_method(tiny_config(name, pretrained=pretext_run), digits.image_shape, K).train()
    method.prepare_training(digits, torch.device("cpu"))
    method.on_epoch_start(digits, torch.device("cpu"), 0)
    optimizer = torch.optim.Adam(method.parameter_groups(0.0), lr=1e-2)
    before = {key: value.detach().clone() for key, value in method.named_parameters()}
    batches = TrainBatches(digits, 64, seed=0)
    moved: set[str] = set()
    for step, (images, companions, indices) in zip(
        range(2), batches.epoch(0, companions=method.companion_indices), strict=False
    ):
        losses = method(Batch(images, indices, companions))
        assert "loss" in losses
        for key, value in losses.items():
            assert value.ndim == 0 and torch.isfinite(value), (key, value)
        losses["loss"].backward()
        progress = TrainingProgress(step, step / 10, len(batches))
        method.on_before_optimizer_step(progress)
        moved |= {
            key for key, value in method.named_parameters() if value.grad is not None and value.grad.any()
        }
        optimizer.step()
        method.on_after_optimizer_step(progress)
        optimizer.zero_grad(set_to_none=True)
    assert moved, f"{name}: no parameter got a gradient"
    after = dict(method.named_parameters())
    assert all(not torch.equal(before[key], after[key]) for key in moved)


@pytest.mark.parametrize("name", TRAINABLE)
def test_readout_gives_features_and_soft_assignments(
    name: str, digits: ArrayDataset, pretext_run: Path
) -> None:
    method = build_method(tiny_config(name, pretrained=pretext_run), digits.image_shape, K).eval()
    images = torch.from_numpy(digits.images[:16])
    out = method.readout(images)
    features = out.pop("features")
    assert features.ndim == 2 and features.shape[0] == 16
    assert features.dtype == torch.float32 and not features.requires_grad
    for soft in out.values():
        assert soft.shape == (16, K) and (soft >= 0).all()
        assert torch.allclose(soft.sum(1), torch.ones(16), atol=1e-5)
    names = {"kmeans", *out}
    assert method.primary_readout in names or method.primary_readout in method.dataset_readouts(
        {key: value.numpy() for key, value in {"features": features, **out}.items()}
    )


def train_losses(run: RunDir) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in run.read_log() if e["event"] == "train"}


@pytest.mark.parametrize("name", TRAINABLE)
def test_resume_continues_the_same_run(
    name: str, tmp_path: Path, pretext_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four steps straight, or stopped after the checkpoint of step 2 and resumed: the same losses and weights."""
    cfg = tiny_config(
        name,
        "train.max_steps=4",
        "train.log_every_steps=1",
        "train.checkpoint_every_steps=2",
        "train.eval_every_epochs=1000",
        pretrained=pretext_run,
    )
    straight = RunDir(tmp_path / "straight").create()
    train(cfg, straight)
    halves = RunDir(tmp_path / "halves").create()
    train_interrupted(cfg, halves, 2, monkeypatch)
    train(cfg, halves, resume=True)
    assert train_losses(straight) == train_losses(halves)
    weights = [torch.load(run.last_checkpoint, weights_only=True)["method"] for run in (straight, halves)]
    for key, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][key], msg=key)


# The primary read-out's ACC on the 1,797 digits after 150 steps: chance (ten roughly equal classes matched
# by the Hungarian algorithm) is about 0.11.
LEARNS_ABOVE = 0.18


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_few_hundred_steps_on_digits_beat_chance(name: str, tmp_path: Path, pretext_run: Path) -> None:
    cfg = tiny_config(name, "train.max_steps=150", "train.eval_every_epochs=1000", pretrained=pretext_run)
    metrics = train(cfg, RunDir(tmp_path / "run").create())
    assert metrics["acc"] > LEARNS_ABOVE, (name, metrics["primary"], metrics["acc"])


SHIPPED = sorted(CONFIG_DIR.glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_builds_its_method(path: Path) -> None:
    """A bad value in a GPU config surfaces here, not on a GPU: the method is built for the dataset's image
    shape (the run it would start from left out) and reads out a blank batch."""
    cfg = build_config(config_file=path)
    assert (cfg.method, cfg.data.name) == (path.parent.name, path.stem)
    cls = METHODS[cfg.method]
    if not cls.trainable:
        return
    if cls.pretrained_setting is not None:  # its constructor checks that a run is named; none is loaded
        OmegaConf.update(cfg, cls.pretrained_setting, "a finished run")
    info = dataset_info(cfg.data.name)
    side = cfg.data.image_size or info.resolution
    shape = (info.channels, side, side)
    method = cls(cfg, shape, cfg.data.num_clusters or info.num_classes or K).eval()
    with torch.no_grad():
        out = (
            method.readout(torch.zeros(2, *shape, dtype=torch.uint8))
            if cls.pretrained_setting is None
            else None
        )
    assert out is None or out["features"].shape[0] == 2


def test_digits_images_are_what_the_tiny_settings_expect(digits: ArrayDataset) -> None:
    assert digits.image_shape == (1, 8, 8) and len(digits) == 1797 and np.unique(digits.labels).size == K
