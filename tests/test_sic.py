"""SIC: its losses against hand-computed values, the method's total as their weighted sum, the stop-gradients,
the k-means initialisation of the centres, the presets and ablations, the distributed losses, and the centre
distance figure (the contract every method keeps is tests/test_method_contract.py)."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from test_benchmark_scripts import _script

from deepclust.config import build_config
from deepclust.data import ArrayDataset, load_dataset
from deepclust.engine.trainer import Trainer
from deepclust.errors import ConfigError
from deepclust.losses import (
    anchor_loss,
    dec_target,
    jensen_shannon,
    kl_divergence,
    nt_xent,
    student_t_assignment,
)
from deepclust.methods import Batch
from deepclust.methods.sic import SIC, WEIGHT_PRESETS, loss_weights, mean_centre_distance
from deepclust.runs import RunDir

IMAGE_SHAPE = (1, 8, 8)
K = 4
BATCH = 12
TINY = [
    "model.backbone=small_cnn",
    "model.width=4",
    "optim.batch_size=64",
    "train.channels_last=false",
    "train.precision=32",
    "train.progress=false",
    "kmeans.n_init=1",
    "params.instance_dim=8",
    "params.hidden_dim=16",
]

# ------------------------------------------------------------------------------- references in numpy (float64)


def np_student_t(h: np.ndarray, mu: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Eq. 4 entry by entry."""
    q = np.empty((len(h), len(mu)))
    for i in range(len(h)):
        for j in range(len(mu)):
            q[i, j] = (1 + np.sum((h[i] - mu[j]) ** 2) / alpha) ** (-(alpha + 1) / 2)
    return q / q.sum(axis=1, keepdims=True)


def np_target(q: np.ndarray) -> np.ndarray:
    """Eq. 5: q² / f, f the column sums, each row renormalised."""
    weight = q**2 / q.sum(axis=0)
    return weight / weight.sum(axis=1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """Eq. 6–7: mean over rows of Σ_j p log(p / q), 0 log 0 = 0."""
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0)
    return float(terms.sum(axis=1).mean())


def np_nt_xent(z_a: np.ndarray, z_b: np.ndarray, tau: float, include_self: bool) -> float:
    """Eq. 1 and 3 as a loop over the 2N anchors; with ``include_self`` the denominator keeps k = i."""
    z = np.concatenate([z_a, z_b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z_a)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(z[i] @ z[k] / tau) for k in range(2 * n) if include_self or k != i)
        total -= math.log(math.exp(z[i] @ z[positive] / tau) / denominator)
    return total / (2 * n)


def as_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# ------------------------------------------------------------------------------------------ the loss functions


def test_student_t_assignment_by_hand() -> None:
    """h = (0,0), (1,0); μ = (0,0), (2,0). α = 1: kernels 1, 1/5 and 1/2, 1/2, so q = [5/6, 1/6], [1/2, 1/2].
    α = 3: (1 + d²/3)^−2 gives 1, (3/7)² and equal kernels for the second row."""
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    mu = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    q = student_t_assignment(h, mu)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, torch.tensor([[5 / 6, 1 / 6], [0.5, 0.5]]))
    first = 1 / (1 + (3 / 7) ** 2)
    q3 = student_t_assignment(h, mu, alpha=3.0)
    torch.testing.assert_close(q3, torch.tensor([[first, 1 - first], [0.5, 0.5]]))
    # a random case against the entry-by-entry formula, in half precision in, float32 out
    generator = torch.Generator().manual_seed(0)
    h, mu = torch.randn(5, 3, generator=generator), torch.randn(4, 3, generator=generator)
    for alpha in (1.0, 2.5):
        expected = torch.from_numpy(np_student_t(as_np(h), as_np(mu), alpha)).float()
        torch.testing.assert_close(student_t_assignment(h, mu, alpha), expected)
    assert student_t_assignment(h.bfloat16(), mu).dtype == torch.float32
    # under autocast too: bf16 distances from ‖h‖² − 2h·μ + ‖μ‖² would be mostly rounding at this scale
    far = h + 30.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = student_t_assignment(far, mu + 30.0)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, student_t_assignment(h, mu), atol=1e-4, rtol=1e-3)


def test_dec_target_by_hand() -> None:
    """q = [5/6, 1/6], [1/2, 1/2]: f = (4/3, 2/3); q²/f = (25/48, 2/48) and (3/16, 6/16), so
    p = [25/27, 2/27], [1/3, 2/3]; detached."""
    q = torch.tensor([[5 / 6, 1 / 6], [0.5, 0.5]], requires_grad=True)
    p = dec_target(q)
    torch.testing.assert_close(p, torch.tensor([[25 / 27, 2 / 27], [1 / 3, 2 / 3]]))
    assert not p.requires_grad
    q = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    torch.testing.assert_close(dec_target(q), torch.from_numpy(np_target(as_np(q))).float())


def test_kl_divergence_by_hand_and_its_gradient_reaches_q_only() -> None:
    """KL[p‖q] of two rows: mean of [0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)] and [1 log(1/0.5) + 0 log 0]."""
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5]], requires_grad=True)
    loss = kl_divergence(p, q)
    expected = (0.5 * math.log(2) + 0.5 * math.log(2 / 3) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dq of mean_i Σ_j p (log p − log q) is −p / (q N): nothing flows through the target
    torch.testing.assert_close(q.grad, -p / q.detach() / 2)
    # a zero probability is clamped inside the log: large, finite, never NaN
    zero = kl_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert torch.isfinite(zero) and zero.item() == pytest.approx(-math.log(1e-8), rel=1e-5)


def test_anchor_loss_by_hand_and_its_stop_gradient() -> None:
    """KL[q0‖q1] + KL[q0‖q2]; with the anchor detached (the code) q0 gets no gradient, without it does."""
    generator = torch.Generator().manual_seed(2)
    logits = [torch.randn(5, 3, generator=generator) for _ in range(3)]
    q0, q1, q2 = (torch.softmax(x, dim=1).requires_grad_() for x in logits)
    expected = np_kl(as_np(q0), as_np(q1)) + np_kl(as_np(q0), as_np(q2))
    loss = anchor_loss(q0, q1, q2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert q0.grad is None
    assert q1.grad is not None and q1.grad.abs().sum() > 0 and q2.grad is not None
    anchor_loss(q0, q1, q2, detach_anchor=False).backward()
    assert q0.grad is not None and q0.grad.abs().sum() > 0


def test_jensen_shannon_by_hand() -> None:
    """JSD of [1, 0] and [0, 1]: both halves are KL against [1/2, 1/2], log 2 each, so JSD = log 2."""
    jsd = jensen_shannon(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert jsd.item() == pytest.approx(math.log(2), rel=1e-6)
    a = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    b = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    m = (as_np(a) + as_np(b)) / 2
    expected = 0.5 * np_kl(as_np(a), m) + 0.5 * np_kl(as_np(b), m)
    assert jensen_shannon(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert jensen_shannon(b, a).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_with_the_papers_denominator_by_hand() -> None:
    """Two samples on the axes, views equal: with the self term the denominator of each anchor is
    e^{1/τ} (itself) + e^{1/τ} (its positive) + 2 (the other sample's views, cosine 0), so the loss is
    log(2 + 2 e^{−1/τ}); without it (the code) log(1 + 2 e^{−1/τ})."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    assert nt_xent(z, z, tau, include_self=True).item() == pytest.approx(
        math.log(2 + 2 * math.exp(-2)), rel=1e-6
    )
    assert nt_xent(z, z, tau).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    generator = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    for include_self in (True, False):
        expected = np_nt_xent(as_np(z_a), as_np(z_b), 0.3, include_self)
        assert nt_xent(z_a, z_b, 0.3, include_self=include_self).item() == pytest.approx(expected, rel=1e-5)


def test_the_losses_stay_finite_far_from_the_centres_and_in_bfloat16() -> None:
    h = torch.tensor([[1e4, -1e4], [0.0, 0.0]]).bfloat16()
    mu = torch.tensor([[0.0, 0.0], [1e-3, 0.0], [5e3, 5e3]])
    q = student_t_assignment(h, mu)
    p = dec_target(q)
    for value in (q, p, kl_divergence(p, q), anchor_loss(q, q, q), jensen_shannon(q, p)):
        assert value.dtype == torch.float32 and torch.isfinite(value).all()


# -------------------------------------------------------------------------------------------------- the method


def make_method(*extra: str, num_clusters: int = K) -> SIC:
    torch.manual_seed(0)
    cfg = build_config(method="sic", dataset="digits", overrides=[*TINY, *extra])
    return SIC(cfg, IMAGE_SHAPE, num_clusters)


def images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)


def fixed_views(method: SIC, raw_requires_grad: bool = False) -> list[torch.Tensor]:
    """Replace the raw view and the two augmented views by fixed tensors; returns [x0, x1, x2]."""
    generator = torch.Generator().manual_seed(1)
    x0, x1, x2 = (torch.randn(BATCH, *IMAGE_SHAPE, generator=generator) for _ in range(3))
    x0.requires_grad_(raw_requires_grad)
    method.augmenter.forward = lambda _images: [x1.clone(), x2.clone()]  # type: ignore[method-assign]
    method.augmenter.eval_view = lambda _images: x0  # type: ignore[method-assign]
    return [x0, x1, x2]


@pytest.mark.parametrize(
    ("anchor", "weights"),
    [("kl_q0", "paper"), ("kl_p0", "code"), ("kl_p_swap", "paper"), ("jsd", "instance_cluster")],
)
def test_the_total_is_the_weighted_sum_of_the_terms_by_hand(anchor: str, weights: str) -> None:
    """Every term recomputed in numpy from the method's own backbone and instance head, for each anchor function
    of Table 5, and the total ``α·L_Instance + β·L_Cluster + γ·L_Anchor`` with the preset's weights."""
    method = make_method(f"params.anchor={anchor}", f"params.weights={weights}").train()
    views = fixed_views(method)
    losses = method(Batch(images()))
    assert set(losses) == {"loss", "instance", "cluster", "anchor"}
    with torch.no_grad():
        h0, h1, h2 = (as_np(method.backbone(v)) for v in views)
        z1, z2 = (as_np(method.instance_head(method.backbone(v))) for v in views[1:])
    mu = as_np(method.centres)
    q0, q1, q2 = (np_student_t(h, mu) for h in (h0, h1, h2))
    p0 = np_target(q0)
    expected_anchor = {
        "kl_q0": np_kl(q0, q1) + np_kl(q0, q2),
        "kl_p0": np_kl(p0, q1) + np_kl(p0, q2),
        "kl_p_swap": np_kl(np_target(q1), q2) + np_kl(np_target(q2), q1),
        "jsd": 0.5 * np_kl(q1, (q1 + q2) / 2) + 0.5 * np_kl(q2, (q1 + q2) / 2),
    }[anchor]
    assert losses["instance"].item() == pytest.approx(np_nt_xent(z1, z2, 0.5, False), rel=1e-4)
    assert losses["cluster"].item() == pytest.approx(np_kl(p0, q0), rel=1e-4, abs=1e-6)
    assert losses["anchor"].item() == pytest.approx(expected_anchor, rel=1e-4, abs=1e-6)
    alpha, beta, gamma = WEIGHT_PRESETS[weights]
    total = alpha * losses["instance"] + beta * losses["cluster"] + gamma * losses["anchor"]
    torch.testing.assert_close(losses["loss"], total)


def test_the_papers_instance_denominator_and_the_instance_centre_space() -> None:
    method = make_method("params.instance_denominator=paper", "params.centre_space=instance").train()
    assert method.centres.shape == (K, 8)  # in the 8-d instance space
    views = fixed_views(method)
    losses = method(Batch(images()))
    with torch.no_grad():
        z0, z1, z2 = (method.embed(method.backbone(v)) for v in views)
    torch.testing.assert_close(losses["instance"], nt_xent(z1, z2, 0.5, include_self=True))
    q0 = student_t_assignment(z0, method.centres.detach())
    torch.testing.assert_close(losses["cluster"], kl_divergence(dec_target(q0), q0))


def test_the_anchor_stop_gradient_keeps_the_raw_view_out_of_the_anchor_loss() -> None:
    """The anchor's gradient reaches the raw view x0 only with ``params.detach_anchor=false``; the DEC target is
    detached either way, so the cluster loss reaches x0 through q0 alone."""
    for detach in (True, False):
        method = make_method(f"params.detach_anchor={str(detach).lower()}").train()
        x0 = fixed_views(method, raw_requires_grad=True)[0]
        losses = method(Batch(images()))
        losses["anchor"].backward(retain_graph=True)
        if detach:
            assert x0.grad is None or not x0.grad.any()
        else:
            assert x0.grad is not None and x0.grad.abs().sum() > 0
        assert method.centres.grad is not None and method.centres.grad.abs().sum() > 0
        x0.grad = None
        losses["cluster"].backward()
        assert x0.grad is not None and x0.grad.abs().sum() > 0


def test_weight_presets_and_overrides() -> None:
    assert loss_weights(make_method().params) == (20.0, 0.1, 0.1)
    assert loss_weights(make_method("params.weights=code").params) == (1.0, 1.0, 1.0)
    assert make_method("params.weights=code", "params.anchor_weight=0.5").loss_weights == (1.0, 1.0, 0.5)
    assert make_method("params.weights=instance_cluster").loss_weights == (20.0, 0.1, 0.0)
    # Table 4's "Instance": no raw view, frozen centres, the instance loss alone
    method = make_method("params.weights=instance").train()
    assert not method.centres.requires_grad
    assert all(
        param is not method.centres for group in method.parameter_groups(0.0) for param in group["params"]
    )
    views = fixed_views(method)
    losses = method(Batch(images()))
    assert set(losses) == {"loss", "instance"}
    with torch.no_grad():
        z1, z2 = (method.instance_head(method.backbone(v)) for v in views[1:])
    torch.testing.assert_close(losses["loss"], 20.0 * nt_xent(z1, z2, 0.5))


def test_table_3_inputs() -> None:
    """x + x + x: one backbone pass of the raw view serves all three; T(x) + T(x) + T(x): x0 is another draw of
    the augmentation, not the raw view."""
    method = make_method("params.inputs=raw").train()
    x0 = fixed_views(method)[0]
    calls: list[torch.Tensor] = []
    method.backbone.register_forward_hook(lambda _module, args, _out: calls.append(args[0]))
    losses = method(Batch(images()))
    assert len(calls) == 1 and calls[0] is x0
    with torch.no_grad():
        z = method.instance_head(method.backbone(x0))
    torch.testing.assert_close(losses["instance"], nt_xent(z, z, 0.5))
    assert losses["anchor"].item() == pytest.approx(0.0, abs=1e-6)  # q0 = q1 = q2

    method = make_method("params.inputs=augmented").train()
    x0, x1, x2 = fixed_views(method)
    third = torch.randn(BATCH, *IMAGE_SHAPE)
    method.augmenter.view = lambda _images, index=0: third  # type: ignore[method-assign]
    calls = []
    method.backbone.register_forward_hook(lambda _module, args, _out: calls.append(args[0]))
    method(Batch(images()))
    assert [c is v for c, v in zip(calls, (x1, x2, third), strict=True)] == [False, False, True]
    assert not any(c is x0 for c in calls)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("params.weights=fast", "params.weights must be one of paper, code, instance, instance_cluster"),
        ("params.anchor=kl", "params.anchor must be one of"),
        ("params.inputs=xxx", "params.inputs must be one of"),
        ("params.centre_space=pixels", "params.centre_space must be one of"),
        ("params.representation=head", "params.representation must be one of"),
        ("params.instance_denominator=both", "params.instance_denominator must be one of"),
        ("params.cluster_weight=-1", "params.cluster_weight must not be negative"),
        ("params.degrees_of_freedom=0", "params.degrees_of_freedom must be positive"),
        ("params.instance_temperature=0", "params.instance_temperature must be positive"),
        ("params.instance_dim=0", "params.instance_dim must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_config_errors(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        make_method(setting)
    assert "\n" not in str(error.value)


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="all 0") as error:
        make_method("params.weights=instance", "params.instance_weight=0")
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------- centres, epoch starts and read-outs


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    return load_dataset("digits")


def test_centres_start_at_k_means_of_the_raw_views_with_k_from_the_config(
    digits: ArrayDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer builds the run with ``data.num_clusters=7`` and prepares it: k-means of the 1,797 raw-view
    backbone features into 7 clusters, whose centroids become the centres. A resume does not prepare again."""
    import deepclust.methods.sic as sic_module

    calls: list[tuple[int, tuple[int, ...]]] = []
    real_kmeans = sic_module.kmeans

    def spy(features: np.ndarray, num_clusters: int, **kwargs: Any) -> Any:
        result = real_kmeans(features, num_clusters, **kwargs)
        calls.append((num_clusters, features.shape))
        spy.result = result  # type: ignore[attr-defined]
        return result

    monkeypatch.setattr(sic_module, "kmeans", spy)
    cfg = build_config(method="sic", dataset="digits", overrides=[*TINY, "data.num_clusters=7"])
    run = RunDir(tmp_path / "run").create()
    run.save_config(cfg)
    trainer = Trainer(cfg, run)
    method = trainer.method
    assert isinstance(method, SIC)
    assert calls == [(7, (len(digits), method.feature_dim))]
    torch.testing.assert_close(method.centres.detach(), torch.from_numpy(spy.result.centroids))  # type: ignore[attr-defined]
    prepared = [e for e in run.read_log() if e["event"] == "prepare"]
    assert prepared and prepared[0]["centre_distance"] == pytest.approx(
        mean_centre_distance(method.centres), abs=1e-5
    )
    assert 0 <= prepared[0]["kmeans_acc"] <= 1


def test_raw_view_embeddings_are_the_backbone_features_of_the_raw_views(digits: ArrayDataset) -> None:
    """In training mode (BatchNorm on each batch's statistics, as the code's k-means initialisation), batches
    split evenly: 1,797 images at batch 64 give 29 batches of 61 or 62."""
    method = make_method().train()
    embeddings = method.raw_view_embeddings(digits, torch.device("cpu"))
    assert embeddings.shape == (len(digits), method.feature_dim) and method.training
    first = torch.from_numpy(digits.images[:62].copy())
    with torch.no_grad():
        expected = method.backbone(method.augmenter.eval_view(first))
    np.testing.assert_allclose(embeddings[:62], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_epoch_start_logs_the_mean_distance_between_centres(digits: ArrayDataset) -> None:
    """Centres (0,0), (3,4), (0,4): pairwise distances 5, 3 and 4, mean 4."""
    method = make_method("params.centre_space=instance", "params.instance_dim=2", num_clusters=3)
    with torch.no_grad():
        method.centres.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]))
    assert method.on_epoch_start(digits, torch.device("cpu"), 5) == {"centre_distance": 4.0}


def test_readout_gives_the_instance_embedding_and_the_student_t_head() -> None:
    method = make_method().eval()
    batch = images()
    out = method.readout(batch)
    assert set(out) == {"features", "head"} and method.primary_readout == "head"
    with torch.no_grad():
        h = method.backbone(method.augmenter.eval_view(batch))
    torch.testing.assert_close(out["features"], method.embed(h))
    torch.testing.assert_close(out["features"].norm(dim=1), torch.ones(BATCH))
    torch.testing.assert_close(out["head"], student_t_assignment(h, method.centres.detach()))
    backbone_out = make_method("params.representation=features").eval().readout(batch)
    torch.testing.assert_close(backbone_out["features"], h)


# --------------------------------------------------------------------------------------------------------- DDP

WORLD = 2


def _distributed_worker(rank: int, port: int, out_dir: str) -> None:
    """One of two gloo processes: the DEC target, KL and the paper's NT-Xent on this rank's half of a batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        q, z_a, z_b = _distributed_inputs()
        rows = slice(rank * 4, (rank + 1) * 4)
        target = dec_target(q[rows], distributed=True)
        results = {
            "target": target,
            "cluster": kl_divergence(target, q[rows]),
            "instance": nt_xent(z_a[rows], z_b[rows], 0.5, gather=True, include_self=True),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _distributed_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    q = torch.softmax(2 * torch.randn(8, 3, generator=generator), dim=1)
    return q, torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)


@pytest.mark.timeout(120)
def test_distributed_target_uses_the_global_batch_frequencies(tmp_path: Path) -> None:
    """Two processes with half a batch each: every sample's target is the one-process target of the whole batch
    (f summed over the processes), and the mean of their losses is the one-process loss."""
    q, z_a, z_b = _distributed_inputs()
    target = dec_target(q)
    single = {"cluster": kl_divergence(target, q), "instance": nt_xent(z_a, z_b, 0.5, include_self=True)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_distributed_worker, args=(port, str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.testing.assert_close(torch.cat([r["target"] for r in ranks]), target)
    assert not torch.allclose(dec_target(q[:4]), target[:4])  # the local frequencies would differ
    for key, value in single.items():
        torch.testing.assert_close(sum(r[key] for r in ranks) / WORLD, value)


# ------------------------------------------------------------------------------------------- the Fig. 2 script


def test_centre_distance_figure_from_a_runs_log(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    run.save_config(OmegaConf.create({"method": "sic", "data": {"name": "digits"}}))
    for epoch, distance in enumerate((1.5, 1.75, 2.0)):
        run.log("epoch_start", epoch=epoch, step=7 * epoch, seconds=0.0, centre_distance=distance)
    readouts = {"head": {"acc": 0.5, "nmi": 0.4, "ari": 0.3}, "kmeans": {"acc": 0.6, "nmi": 0.5, "ari": 0.4}}
    run.log("eval", step=21, epoch=3, primary="head", readouts=readouts)
    out = tmp_path / "fig.png"
    result = _script("sic_centre_distance.py", run.path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    assert "| 1 | 1.7500 |" in result.stdout.splitlines()
    # a run without centre distances (another method's) is refused in one line
    (run.path / "log.jsonl").write_text(json.dumps({"event": "start", "time": 0}) + "\n")
    refused = _script("sic_centre_distance.py", run.path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
