"""SCAN and self-labelling: the losses by hand, neighbour mining, pretrained models, training and resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from deepclust.cli import main
from deepclust.config import build_config
from deepclust.data import load_dataset
from deepclust.engine.trainer import train
from deepclust.errors import ConfigError, UserError
from deepclust.evaluation import neighbours as neighbours_module
from deepclust.evaluation.neighbours import nearest_neighbours, neighbour_accuracy, neighbour_vote
from deepclust.losses import confident_self_label_loss, neighbour_consistency, top_per_cluster_self_label_loss
from deepclust.methods import Batch, method_class
from deepclust.runs.checkpoint import load_checkpoint
from deepclust.runs.pretrained import build_method
from deepclust.runs.run_dir import RunDir

TINY = [
    "model.width=8",
    "optim.batch_size=64",
    "train.log_every_steps=1",
    "train.progress=false",
    "train.precision=32",
    "kmeans.n_init=1",
]


def scan_config(*extra: str) -> DictConfig:
    return build_config(method="scan", dataset="digits", overrides=[*TINY, *extra])


def test_neighbour_consistency_by_hand() -> None:
    # ⟨[0.8, 0.2], [0.6, 0.4]⟩ = 0.56 and ⟨[1, 0], [0.5, 0.5]⟩ = 0.5: the loss is −(log 0.56 + log 0.5)/2
    p_anchor = torch.tensor([[0.8, 0.2], [1.0, 0.0]])
    p_neighbour = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    expected = -(math.log(0.56) + math.log(0.5)) / 2
    assert neighbour_consistency(p_anchor, p_neighbour).item() == pytest.approx(expected, rel=1e-6)
    # confident agreement costs nothing; complete disagreement is large but finite
    one_hot = torch.eye(3)
    assert neighbour_consistency(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-7)
    # zero dot products, clamped at float32's smallest normal number: −log(1.18e-38) ≈ 87.3
    disagreement = neighbour_consistency(one_hot, one_hot.roll(1, dims=0)).item()
    assert disagreement == pytest.approx(-math.log(torch.finfo(torch.float32).tiny), rel=1e-6)
    with pytest.raises(ValueError, match="N×K"):
        neighbour_consistency(torch.ones(2, 3) / 3, torch.ones(3, 3) / 3)


@pytest.mark.parametrize("use_faiss", [True, False])
def test_nearest_neighbours_by_cosine(monkeypatch: pytest.MonkeyPatch, use_faiss: bool) -> None:
    monkeypatch.setattr(neighbours_module, "faiss_available", lambda: use_faiss)
    # unit vectors at 0°, 10°, 30°, 100° and 95°, and a longer copy of the first: cosine ignores the length
    angles = np.radians([0.0, 10.0, 30.0, 100.0, 95.0, 0.0])
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points[5] *= 3.0
    found = nearest_neighbours(points, 2)
    assert found.shape == (6, 2) and found.dtype == np.int64
    assert set(found[0]) == {5, 1}  # its duplicate and the 10° point; never itself
    assert set(found[5]) == {0, 1}
    assert found[2].tolist() == [1, 0] or found[2].tolist() == [1, 5]
    assert found[3].tolist() == [4, 2]
    assert all(i not in row for i, row in enumerate(found))
    labels = np.array([0, 0, 0, 1, 1, 0])
    # rows 0, 1, 2 and 5 keep both neighbours in their class, rows 3 and 4 one of two: 10 of 12
    assert neighbour_accuracy(found, labels) == pytest.approx(10 / 12)
    with pytest.raises(UserError, match="neighbours"):
        nearest_neighbours(points, 6)
    points[2, 0] = np.nan
    with pytest.raises(UserError, match="features for the neighbour search contain NaN"):
        nearest_neighbours(points, 2)


def test_neighbour_vote_averages_the_neighbours_probabilities() -> None:
    # two groups of directions: 0°, 4°, 8°, 12° and 90°, 94°, 98°
    angles = np.radians([0.0, 4.0, 8.0, 12.0, 90.0, 94.0, 98.0])
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    probs = np.array(
        [
            [0.55, 0.45],
            [0.55, 0.45],
            [0.0, 1.0],  # the head puts 8° with the other group; its neighbours 4° and 12° say otherwise
            [0.9, 0.1],
            [0.2, 0.8],
            [0.3, 0.7],
            [0.1, 0.9],
        ]
    )
    # k = 2: 8° averages 4° and 12°: (0.725, 0.275) -> 0; 0°, 4° and 12° each average a (0.55, 0.45)
    # neighbour with 8°'s (0, 1): (0.275, 0.725) -> 1, where hard votes would tie
    votes = neighbour_vote(probs, points, 2)
    assert votes.tolist() == [1, 1, 0, 1, 1, 1, 1]
    # k = 3 on 0°: 4°, 8° and 12°: (0.4833, 0.5167) -> 1, where two of three hard votes say 0
    assert neighbour_vote(probs, points, 3)[0] == 1
    # tensors in, an array out, with the same votes
    from_tensors = neighbour_vote(torch.as_tensor(probs), torch.as_tensor(points), 2)
    assert isinstance(from_tensors, np.ndarray) and from_tensors.tolist() == votes.tolist()
    with pytest.raises(UserError, match="rows"):
        neighbour_vote(probs[:5], points, 2)
    with pytest.raises(UserError, match="neighbours"):
        neighbour_vote(probs, points, 7)


def test_scan_needs_a_pretrained_backbone_or_pixel_neighbours(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"params\.pretrained"):
        method_class("scan")(scan_config(), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="neighbour_space"):
        method_class("scan")(scan_config("params.neighbour_space=colour"), (1, 8, 8), 10)
    with pytest.raises(UserError, match="run directory not found"):
        build_method(scan_config(f"params.pretrained={tmp_path / 'missing'}"), (1, 8, 8), 10)
    unstarted = RunDir(tmp_path / "unstarted").create()
    unstarted.save_config(scan_config())
    with pytest.raises(UserError, match="no checkpoint"):
        build_method(scan_config(f"params.pretrained={unstarted.path}"), (1, 8, 8), 10)


def test_scan_on_a_pretrained_cc_run_then_resume(tmp_path: Path) -> None:
    """CC trains a backbone; SCAN loads it, mines neighbours with it, trains, and resumes with the same ones."""
    pretext = RunDir(tmp_path / "cc").create()
    train(build_config(method="cc", dataset="digits", overrides=[*TINY, "train.max_steps=3"]), pretext)
    pretext_weights = load_checkpoint(pretext.checkpoint_dir / "last.pt")["method"]

    settings = (
        f"params.pretrained={pretext.path}",
        "params.num_neighbours=5",
        "train.checkpoint_every_steps=2",
    )
    scan_run = RunDir(tmp_path / "scan").create()
    cfg = scan_config(*settings, "train.max_steps=4")
    method = build_method(cfg, (1, 8, 8), 10)
    for name, value in method.backbone.state_dict().items():
        torch.testing.assert_close(value, pretext_weights[f"backbone.{name}"])

    metrics = train(cfg, scan_run)
    assert metrics["primary"] == "head" and set(metrics["readouts"]) == {"head", "kmeans"}
    events = scan_run.read_log()
    prepare = next(e for e in events if e["event"] == "prepare")
    assert prepare["space"] == "features"
    train_event = next(e for e in events if e["event"] == "train")
    assert {"consistency", "entropy"} <= set(train_event)
    assert train_event["loss"] == pytest.approx(
        train_event["consistency"] - 5.0 * train_event["entropy"], abs=1e-4
    )
    saved = load_checkpoint(scan_run.checkpoint_dir / "last.pt")["method"]["_extra_state"]["neighbours"]
    assert saved.shape == (1797, 5)
    # the logged share of neighbours in the image's class is that of the neighbours kept
    labels = load_dataset("digits").labels
    assert prepare["neighbour_accuracy"] == round(neighbour_accuracy(saved.numpy(), labels), 4)

    train(scan_config(*settings, "train.max_steps=6"), scan_run, resume=True)
    events = scan_run.read_log()
    assert sum(e["event"] == "prepare" for e in events) == 1  # resume restores, it does not mine again
    assert max(e["step"] for e in events if e["event"] == "train") == 6
    after = load_checkpoint(scan_run.checkpoint_dir / "last.pt")["method"]["_extra_state"]["neighbours"]
    assert torch.equal(saved, after)


def test_scan_sums_the_heads_losses_and_reads_out_the_lowest() -> None:
    """Every head's Λ (Eq. 2) by hand, their sum as the loss, the running losses, and the read-out head."""
    cfg = scan_config(
        "params.neighbour_space=pixels",
        "params.num_heads=3",
        "params.head_loss_momentum=0.5",
        "params.entropy_weight=3.0",
    )
    method = method_class("scan")(cfg, (1, 8, 8), 10)
    assert method.cluster_heads.best == 0  # no step yet: every running loss is NaN
    torch.manual_seed(0)
    images = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.uint8)
    neighbours = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.uint8)

    def step(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The method's losses on views drawn from ``seed``, the features, and every head's Λ by hand."""
        torch.manual_seed(seed)
        losses = method(Batch(images, companions=neighbours))
        torch.manual_seed(seed)  # the same augmented views again, to recompute every head's loss by hand
        features = method.backbone(method.prepare(method.augmenter.view(torch.cat([images, neighbours]))))
        by_hand = []
        for head in method.cluster_heads:
            p_anchor, p_neighbour = head(features).softmax(dim=1).chunk(2)
            consistency = -torch.log((p_anchor * p_neighbour).sum(dim=1)).mean()
            marginal = p_anchor.mean(dim=0)
            by_hand.append(consistency + 3.0 * (marginal * marginal.log()).sum())
        return losses, features, torch.stack(by_hand).detach()

    losses, features, by_hand = step(1)
    torch.testing.assert_close(losses["loss"].detach(), by_hand.sum(), rtol=1e-5, atol=1e-5)
    # the first step sets the running losses
    running = method.cluster_heads.running_losses
    torch.testing.assert_close(running, by_hand, rtol=1e-5, atol=1e-5)
    best = int(by_hand.argmin())
    assert method.cluster_heads.best == best
    # the logged terms are the read-out head's
    logged = (losses["consistency"] - 3.0 * losses["entropy"]).detach()
    torch.testing.assert_close(logged, by_hand[best], rtol=1e-5, atol=1e-5)
    # the next one (other views) moves them half-way (momentum 0.5)
    _, _, by_hand_next = step(2)
    assert not torch.allclose(by_hand_next, by_hand)
    torch.testing.assert_close(running, 0.5 * (by_hand + by_hand_next), rtol=1e-5, atol=1e-5)
    # the read-out follows the head whose running loss is lowest, and that is saved with the model
    running.copy_(torch.tensor([0.5, -1.0, 0.2]))
    assert method.cluster_heads.best == 1
    probs = method.cluster_probs(features[:2])
    torch.testing.assert_close(probs, method.cluster_heads[1](features[:2]).softmax(dim=1))
    assert torch.equal(method.state_dict()["cluster_heads.running_losses"], torch.tensor([0.5, -1.0, 0.2]))


@pytest.mark.parametrize(
    "override,message",
    [("params.num_heads=0", "num_heads"), ("params.head_loss_momentum=1.0", "head_loss_momentum")],
)
def test_scan_rejects_bad_head_settings(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        method_class("scan")(scan_config("params.neighbour_space=pixels", override), (1, 8, 8), 10)


def test_scan_draws_companions_from_the_mined_neighbours() -> None:
    method = method_class("scan")(scan_config("params.neighbour_space=pixels"), (1, 8, 8), 10)
    method.neighbours = torch.arange(30).view(10, 3)
    generator = torch.Generator().manual_seed(0)
    indices = torch.tensor([0, 4, 9, 4])
    drawn = method.companion_indices(indices, generator)
    assert all(int(d) in set(method.neighbours[i].tolist()) for i, d in zip(indices, drawn, strict=True))
    # uniformly among the anchor's mined neighbours: each of anchor 4's three about a third of the time
    many = method.companion_indices(torch.full((3000,), 4), generator)
    shares = torch.bincount(many - 12, minlength=3).float() / 3000
    assert (
        many.min() >= 12 and many.max() <= 14 and torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.05)
    )


def test_pretrained_with_another_architecture_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pretext = RunDir(tmp_path / "cc").create()
    train(build_config(method="cc", dataset="digits", overrides=[*TINY, "train.max_steps=1"]), pretext)
    capsys.readouterr()
    code = main(
        [
            "train",
            "--method",
            "scan",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "scan"),
            *TINY,
            "model.width=16",
            f"params.pretrained={pretext.path}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0]


# ------------------------------------------------------------------------------------------ self-labelling


def test_confident_self_label_loss_by_hand() -> None:
    # Three confident samples (pseudo-labels 0, 0, 1) and one that is not (0.6 < 0.99).
    p_weak = torch.tensor([[0.995, 0.005], [0.995, 0.005], [0.005, 0.995], [0.6, 0.4]])
    p_strong = torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.25, 0.75], [0.1, 0.9]])
    losses = [-math.log(0.5), -math.log(0.8), -math.log(0.75)]
    plain, share = confident_self_label_loss(p_weak, p_strong, 0.99, balanced=False)
    assert plain.item() == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert share.item() == pytest.approx(0.75)
    # balanced: class 0 has 2 of the 3 confident samples (weight 3/2), class 1 has 1 (weight 3)
    balanced, _ = confident_self_label_loss(p_weak, p_strong, 0.99)
    expected = (1.5 * losses[0] + 1.5 * losses[1] + 3.0 * losses[2]) / (1.5 + 1.5 + 3.0)
    assert balanced.item() == pytest.approx(expected, rel=1e-6)
    # nothing confident: zero loss, still differentiable
    p_strong.requires_grad_(True)
    none, share = confident_self_label_loss(torch.full((2, 2), 0.5), p_strong[:2])
    assert none.item() == 0.0 and share.item() == 0.0
    none.backward()
    with pytest.raises(ValueError, match="threshold"):
        confident_self_label_loss(p_weak, p_strong, 1.0)


def test_top_per_cluster_self_label_loss_by_hand() -> None:
    # N = 6, K = 2, fraction 0.5: at most ⌈0.5 · 6 / 2⌉ = 2 samples per cluster. Cluster 0 holds four samples
    # (0.9, 0.8, 0.7, 0.6) and keeps 0.9 and 0.8; cluster 1 holds two (0.8, 0.55) and keeps both.
    p_weak = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55], [0.6, 0.4]])
    p_strong = torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.1, 0.9]])
    loss, share = top_per_cluster_self_label_loss(p_weak, p_strong, fraction=0.5)
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.6) + math.log(0.2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6) and share.item() == pytest.approx(4 / 6)
    # the threshold still applies: 0.75 drops cluster 1's 0.55
    loss, share = top_per_cluster_self_label_loss(p_weak, p_strong, fraction=0.5, threshold=0.75)
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.6)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6) and share.item() == pytest.approx(3 / 6)
    # a cluster that takes every sample still contributes only its quota
    _, share = top_per_cluster_self_label_loss(torch.tensor([[0.9, 0.1]] * 8), torch.full((8, 2), 0.5), 0.25)
    assert share.item() == pytest.approx(1 / 8)
    # nothing selected: zero loss, still differentiable
    p_strong.requires_grad_(True)
    none, share = top_per_cluster_self_label_loss(p_weak, p_strong, 0.5, threshold=0.95)
    assert none.item() == 0.0 and share.item() == 0.0
    none.backward()
    for bad, message in (
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\], got 1.5"),
        ({"threshold": 1.0}, r"threshold must be in \[0, 1\), got 1.0"),
    ):
        with pytest.raises(ValueError, match=message):
            top_per_cluster_self_label_loss(p_weak, p_strong, **bad)


def test_selflabel_fine_tunes_a_cc_run(tmp_path: Path) -> None:
    pretext = RunDir(tmp_path / "cc").create()
    cc_cfg = build_config(method="cc", dataset="digits", overrides=[*TINY, "train.max_steps=3"])
    pretext.save_config(cc_cfg)
    train(cc_cfg, pretext)
    before = load_checkpoint(pretext.checkpoint_dir / "last.pt")["method"]

    cfg = build_config(
        method="selflabel",
        dataset="digits",
        overrides=[*TINY, "train.max_steps=3", f"params.pretrained={pretext.path}", "params.threshold=0.1"],
    )
    run = RunDir(tmp_path / "selflabel").create()
    metrics = train(cfg, run)
    assert metrics["primary"] == "head"
    steps = [e for e in run.read_log() if e["event"] == "train"]
    assert len(steps) == 3 and all(e["confident_share"] == 1.0 for e in steps)  # every sample is above 0.1
    after = load_checkpoint(run.checkpoint_dir / "last.pt")["method"]
    head = "cluster_heads.heads.0.net.0.weight"
    assert not torch.equal(after[f"model.{head}"], before[head])

    # the loss by hand: pseudo-labels from the evaluation view, the cross-entropy of an augmented view, SCAN's
    # class balancing (which changes the value on this batch)
    method = build_method(cfg, (1, 8, 8), 10).train()
    model = method.model
    with torch.no_grad():  # three steps leave the head collapsed; random weights spread its pseudo-labels
        generator = torch.Generator().manual_seed(0)
        for param in model.cluster_heads.parameters():
            param.normal_(0.0, 1.0, generator=generator)
    batch = torch.randint(0, 17, (32, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    losses = method(Batch(batch))
    torch.manual_seed(3)  # the same augmented view again
    with torch.no_grad():
        p_weak = model.cluster_probs(model.backbone(model.prepare(method.augmenter.eval_view(batch))))
    p_strong = model.cluster_probs(model.backbone(model.prepare(method.augmenter.view(batch))))
    expected, share = confident_self_label_loss(p_weak, p_strong, 0.1, balanced=True)
    torch.testing.assert_close(losses["loss"], expected)
    assert losses["confident_share"].item() == share.item() == 1.0
    assert not torch.allclose(expected, confident_self_label_loss(p_weak, p_strong, 0.1, balanced=False)[0])
    assert not torch.allclose(expected, confident_self_label_loss(p_strong.detach(), p_strong, 0.1)[0])

    # TCL-style boosting: a balanced per-cluster selection, with CC's own losses kept alongside
    boost = [f"params.pretrained={pretext.path}", "params.selection=top_per_cluster", "params.threshold=0"]
    cfg = build_config(
        method="selflabel",
        dataset="digits",
        overrides=[
            *TINY,
            "train.max_steps=2",
            *boost,
            "params.per_cluster_fraction=0.5",
            "params.keep_objective=2",
        ],
    )
    run = RunDir(tmp_path / "boost").create()
    train(cfg, run)
    for step in (e for e in run.read_log() if e["event"] == "train"):
        # 64 samples, K = 10, fraction 0.5: at most ⌈0.5 · 64 / 10⌉ = 4 per cluster, 40 in all
        assert 0.0 < step["confident_share"] <= 40 / 64
        assert {"cc_instance", "cc_cluster", "cc_entropy"} <= step.keys()
        assert step["loss"] == pytest.approx(step["self_label"] + 2 * step["cc_loss"], abs=1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("params.selection=sometimes", "params.selection"),
        ("params.threshold=0", "params.threshold"),
        ("params.per_cluster_fraction=0", "params.per_cluster_fraction"),
        ("params.keep_objective=-1", "params.keep_objective"),
    ],
)
def test_selflabel_rejects_bad_params(override: str, message: str) -> None:
    cfg = build_config(
        method="selflabel", dataset="digits", overrides=[*TINY, "params.pretrained=x", override]
    )
    with pytest.raises(ConfigError, match=message):
        method_class("selflabel")(cfg, (1, 8, 8), 10)


def test_selflabel_needs_a_run_with_a_cluster_head(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"params\.pretrained"):
        method_class("selflabel")(build_config(method="selflabel", dataset="digits"), (1, 8, 8), 10)
    simclr = RunDir(tmp_path / "simclr").create()
    simclr_cfg = build_config(method="simclr", dataset="digits", overrides=[*TINY, "train.max_steps=1"])
    simclr.save_config(simclr_cfg)
    train(simclr_cfg, simclr)
    cfg = build_config(
        method="selflabel", dataset="digits", overrides=[*TINY, f"params.pretrained={simclr.path}"]
    )
    with pytest.raises(UserError, match="no cluster head"):
        build_method(cfg, (1, 8, 8), 10)
    # SwAV with K prototypes has a cluster head (behind a BatchNorm projector, so it is asked in eval mode)
    swav = RunDir(tmp_path / "swav").create()
    swav_settings = [*TINY, "train.max_steps=1", "params.projection_dim=8", "params.hidden_dim=16"]
    swav_cfg = build_config(method="swav", dataset="digits", overrides=swav_settings)
    swav.save_config(swav_cfg)
    train(swav_cfg, swav)
    accepted = build_config(
        method="selflabel", dataset="digits", overrides=[*TINY, f"params.pretrained={swav.path}"]
    )
    assert build_method(accepted, (1, 8, 8), 10).model.cfg.method == "swav"
    other_data = build_config(
        method="selflabel", dataset="fashion-mnist", overrides=[*TINY, f"params.pretrained={simclr.path}"]
    )
    with pytest.raises(UserError, match="same data"):
        build_method(other_data, (1, 28, 28), 10)
    with pytest.raises(UserError, match="run directory not found"):
        cfg.params.pretrained = str(tmp_path / "missing")
        build_method(cfg, (1, 8, 8), 10)
