"""C2BIN: Eq. 4 against hand-computed values and a loop over the printed sum, the column contrast and the entropy
against CC's, the entropy's maximum, the follower (no gradient, exact EMA), the presets' heads, bad settings, and
the distributed losses and gradients (the contract every method keeps is tests/test_method_contract.py)."""

from __future__ import annotations

import itertools
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from deepclust.config import build_config
from deepclust.errors import ConfigError
from deepclust.losses import (
    alignment_loss,
    bca_contrast,
    bca_entropy,
    cc_entropy_term,
    cluster_contrastive_loss,
)
from deepclust.methods import Batch, TrainingProgress
from deepclust.methods.c2bin import C2BIN, CLUSTERING_HEADS, PRESETS
from deepclust.models.ema import cosine_momentum

IMAGE_SHAPE = (1, 8, 8)
K = 4
BATCH = 16
TINY = [
    "model.backbone=small_cnn",
    "model.width=4",
    "optim.batch_size=16",
    "train.channels_last=false",
    "train.precision=32",
    "params.projection_dim=8",
    "params.hidden_dim=16",
    "params.head_sizes=[6]",
]


def make_method(*extra: str, num_clusters: int = K) -> C2BIN:
    torch.manual_seed(0)
    cfg = build_config(method="c2bin", dataset="digits", overrides=[*TINY, *extra])
    return C2BIN(cfg, IMAGE_SHAPE, num_clusters)


def images(seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)


def fix_views(method: C2BIN, seed: int = 1) -> list[Tensor]:
    """Replace the random augmentation by two fixed views; returns them."""
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(BATCH, *IMAGE_SHAPE, generator=generator) for _ in range(2)]
    method.augmenter.forward = lambda _images: [v.clone() for v in views]  # type: ignore[method-assign]
    return views


def soft(n: int, k: int, seed: int) -> Tensor:
    return torch.softmax(
        torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 1
    )


# --------------------------------------------------------------------------------------------------- Eq. 4


def np_bca(
    c_a: np.ndarray,
    c_b: np.ndarray,
    tau: float,
    negatives: str,
    positive: bool,
    similarity: str,
    symmetric: bool,
) -> float:
    """Eq. 4 as a loop: for every anchor column, −log exp(s(anchor, positive)/τ) / Σ over the kept keys."""
    cols = [c_a.T, c_b.T]
    if similarity == "cosine":
        cols = [c / np.linalg.norm(c, axis=1, keepdims=True) for c in cols]
    k = c_a.shape[1]
    losses = []
    for view in (0, 1) if symmetric else (0,):
        other = 1 - view
        for i in range(k):
            anchor = cols[view][i]
            numerator = np.exp(anchor @ cols[other][i] / tau)
            denominator = 0.0
            for j in range(k):
                if j != i or positive:
                    denominator += np.exp(anchor @ cols[other][j] / tau)
                if negatives == "both_views" and j != i:
                    denominator += np.exp(anchor @ cols[view][j] / tau)
            losses.append(-np.log(numerator / denominator))
    return float(np.mean(losses))


def test_eq4_on_a_hand_computed_case() -> None:
    """Two samples, two clusters: columns a = (1, 0), (0, 1) and b = (0.8, 0.2), (0.2, 0.8); cos(a_i, b_i) =
    0.8/√0.68, cos(a_i, b_j≠i) = 0.2/√0.68 for all four anchors."""
    c_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    c_b = torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64)
    tau = 0.5
    gap = 0.6 / math.sqrt(0.68) / tau  # (cos_pos − cos_neg) / τ
    # as printed: the one negative alone in the denominator, −s_pos/τ + s_neg/τ
    assert bca_contrast(c_a, c_b, tau).item() == pytest.approx(-gap)
    # with the positive in the denominator: log(1 + exp(−gap))
    got = bca_contrast(c_a, c_b, tau, positive_in_denominator=True).item()
    assert got == pytest.approx(math.log1p(math.exp(-gap)))
    # the plain dot product: 0.8 and 0.2
    assert bca_contrast(c_a, c_b, tau, similarity="dot").item() == pytest.approx(-0.6 / tau)
    # one direction only: the same here, by symmetry
    assert bca_contrast(c_a, c_b, tau, symmetric=False).item() == pytest.approx(-gap)


@pytest.mark.parametrize(
    "negatives,positive,similarity,symmetric",
    list(itertools.product(("other_view", "both_views"), (False, True), ("cosine", "dot"), (True, False))),
)
def test_eq4_equals_the_printed_sum(negatives: str, positive: bool, similarity: str, symmetric: bool) -> None:
    c_a, c_b = soft(5, 3, 0), soft(5, 3, 1)
    got = bca_contrast(
        c_a,
        c_b,
        0.7,
        negatives=negatives,
        positive_in_denominator=positive,
        similarity=similarity,
        symmetric=symmetric,
    )
    want = np_bca(c_a.numpy(), c_b.numpy(), 0.7, negatives, positive, similarity, symmetric)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_the_cc_form_of_the_contrast_is_ccs_cluster_level_loss(tau: float) -> None:
    c_a, c_b = soft(12, 5, 2), soft(12, 5, 3)
    ours = bca_contrast(c_a, c_b, tau, negatives="both_views", positive_in_denominator=True)
    torch.testing.assert_close(ours, cluster_contrastive_loss(c_a, c_b, tau))


def test_the_methods_cluster_loss_in_ccs_form_is_ccs_cluster_loss() -> None:
    """One head of K clusters, CC's columns and τ, the entropy of each view summed: C2BIN's cluster loss
    (contrast − λ_ent·H) equals CC's contrast + λ·entropy term up to CC's constant 2λ·log K."""
    method = make_method(
        "params.head_sizes=[]",
        "params.negatives=both_views",
        "params.positive_in_denominator=true",
        "params.entropy_views=sum",
        "params.temperature=0.8",
        "params.entropy_weight=0.7",
    ).eval()
    views = fix_views(method)
    out = method(Batch(images()))
    with torch.no_grad():
        c_a, c_b = (method.assignments(method.backbone(v))[0] for v in views)
    cc = cluster_contrastive_loss(c_a, c_b, 0.8) + 0.7 * cc_entropy_term(c_a, c_b, variant="code")
    torch.testing.assert_close(out["cluster"], cc - 0.7 * 2 * math.log(K))
    # "mean" is CC's entropy as its paper prints it, up to log 2
    half = bca_entropy(c_a, c_b, views="mean")
    torch.testing.assert_close(-half - math.log(2), cc_entropy_term(c_a, c_b, variant="paper"))


# --------------------------------------------------------------------------------------------------- Eq. 5


@pytest.mark.parametrize("views,scale", [("mean", 1), ("sum", 2), ("pooled", 1)])
def test_the_entropy_is_largest_for_uniform_masses(views: str, scale: int) -> None:
    uniform = torch.full((8, 5), 0.2, dtype=torch.float64)
    top = bca_entropy(uniform, uniform, views=views)
    assert top.item() == pytest.approx(scale * math.log(5))
    for seed in range(5):
        assert bca_entropy(soft(8, 5, seed), soft(8, 5, seed + 10), views=views) < top
    # a uniform column mass from non-uniform rows is also the maximum: the entropy is of s, not of the rows
    one_hot = torch.eye(5, dtype=torch.float64)
    assert bca_entropy(one_hot, one_hot, views=views).item() == pytest.approx(scale * math.log(5))
    # and a collapse onto one cluster the minimum, 0
    collapsed = torch.zeros(8, 5, dtype=torch.float64)
    collapsed[:, 0] = 1
    assert bca_entropy(collapsed, collapsed, views=views).item() == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------- Eq. 1 and 7


def test_alignment_is_one_minus_the_cosine() -> None:
    prediction = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 2.0], [3.0, 3.0]], requires_grad=True)
    assert alignment_loss(prediction, target).item() == pytest.approx(0.5 * ((1 - 0) + (1 - 1)))
    alignment_loss(prediction, target).backward()
    assert target.grad is None or not target.grad.any()


@pytest.mark.parametrize("align_views", ["mean", "sum"])
def test_the_total_is_eq7_and_the_alignment_is_symmetrised(align_views: str) -> None:
    method = make_method(
        f"params.align_views={align_views}", "params.cluster_weight=2.0", "params.entropy_weight=0.5"
    ).eval()
    views = fix_views(method)
    out = method(Batch(images()))
    with torch.no_grad():
        r = [method.backbone(v) for v in views]
        pred = [method.predictor(method.projector(h)) for h in r]
        target = [method.follower(v) for v in views]
    both = alignment_loss(pred[0], target[1]) + alignment_loss(pred[1], target[0])
    torch.testing.assert_close(out["align"], both / 2 if align_views == "mean" else both)
    torch.testing.assert_close(out["cluster"], out["contrast"] - 0.5 * out["entropy"])
    torch.testing.assert_close(out["loss"], out["align"] + 2.0 * out["cluster"])
    # Eq. 6: the heads' losses summed, K = {K, 6}
    with torch.no_grad():
        heads = [method.assignments(h) for h in r]
    contrast = sum(bca_contrast(heads[0][i], heads[1][i], 1.0) for i in range(2))
    entropy = sum(bca_entropy(heads[0][i], heads[1][i]) for i in range(2))
    torch.testing.assert_close(out["contrast"], contrast)
    torch.testing.assert_close(out["entropy"], entropy)


# ----------------------------------------------------------------------------------------------- follower


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_follower_gets_no_gradient_and_its_ema_update_is_exact(schedule: str) -> None:
    method = make_method("params.momentum=0.9", f"params.momentum_schedule={schedule}").train()
    runner = torch.nn.Sequential(method.backbone, method.projector)
    # an exact copy at the start
    for a, b in zip(method.follower.state_dict().values(), runner.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    optimizer = torch.optim.SGD(method.parameter_groups(0.0), lr=0.1)
    method(Batch(images()))["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in method.follower.parameters())
    assert all(p.grad is not None for p in method.backbone.parameters())
    optimizer.step()
    before = [t.clone() for t in method.follower.state_dict().values()]
    progress = TrainingProgress(step=3, fraction=0.3, steps_per_epoch=10)
    method.on_after_optimizer_step(progress)
    gamma = 0.9 if schedule == "constant" else cosine_momentum(0.3, 0.9)
    assert method.momentum == gamma
    after = method.follower.state_dict()
    for (key, new), old, online in zip(after.items(), before, runner.state_dict().values(), strict=True):
        if new.is_floating_point():
            assert torch.equal(new, old.mul(gamma).add(online, alpha=1 - gamma)), key
        else:  # BatchNorm's step counter is copied
            assert torch.equal(new, online), key


# ------------------------------------------------------------------------------------------ presets, errors


def test_the_default_heads_are_table_10s() -> None:
    method = make_method("params.head_sizes=null")
    assert method.head_sizes == (K, *CLUSTERING_HEADS) == (K, 40, 160)
    assert method.primary_readout == "head"
    assert [head.out_features for head in method.cluster_heads] == [K, 40, 160]
    assert make_method("params.head_sizes=null", num_clusters=20).head_sizes == (20, 40, 160)
    out = method.eval().readout(images())
    assert set(out) == {"features", "head"} and out["head"].shape == (BATCH, K)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_give_their_heads(preset: str) -> None:
    method = make_method("params.head_sizes=null", f"params.preset={preset}").eval()
    assert method.head_sizes == PRESETS[preset]
    assert [head.out_features for head in method.cluster_heads] == list(PRESETS[preset])
    assert method.primary_readout == "kmeans"
    assert set(method.readout(images())) == {"features"}


def test_table_rows() -> None:
    assert PRESETS["a"] == () and PRESETS["b"] == (32,) and PRESETS["c"] == (128,)
    assert PRESETS["d"] == (32, 32, 32) and PRESETS["e"] == (128, 128, 128) and PRESETS["f"] == (32, 64, 128)
    assert PRESETS["t9a"] == PRESETS["f"] and PRESETS["t9h"] == (8, 16, 32) and PRESETS["t9g"] == (512,) * 3


def test_alignment_only_has_no_cluster_loss() -> None:
    method = make_method("params.head_sizes=null", "params.preset=a").eval()
    fix_views(method)
    out = method(Batch(images()))
    assert set(out) == {"loss", "align"} and torch.equal(out["loss"], out["align"])


def test_a_preset_with_a_readout_head() -> None:
    method = make_method("params.head_sizes=null", "params.preset=b", "params.readout_head=true")
    assert method.head_sizes == (K, 32) and method.primary_readout == "head"


@pytest.mark.parametrize(
    "override,message",
    [
        ("params.preset=z", "params.preset"),
        ("params.preset=b", "params.head_sizes"),  # with the TINY head_sizes
        ("params.head_sizes=[1]", "at least 2 clusters"),
        ("params.temperature=0", "params.temperature"),
        ("params.momentum=1.5", "params.momentum"),
        ("params.entropy_weight=-1", "params.entropy_weight"),
        ("params.cluster_weight=-1", "params.cluster_weight"),
        ("params.projection_dim=0", "params.projection_dim"),
        ("params.negatives=all", "params.negatives"),
        ("params.similarity=l2", "params.similarity"),
        ("params.entropy_views=both", "params.entropy_views"),
        ("params.align_views=max", "params.align_views"),
        ("params.momentum_schedule=linear", "params.momentum_schedule"),
    ],
)
def test_bad_settings_give_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_method(override)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- DDP

WORLD = 2
CASES = {
    "default": (),
    "options": (
        "params.preset=d",
        "params.head_sizes=null",
        "params.negatives=both_views",
        "params.similarity=dot",
        "params.entropy_views=pooled",
    ),
}


def _losses_and_grads(method: C2BIN, rows: slice) -> tuple[dict[str, Tensor], list[Tensor]]:
    views = fix_views(method)
    method.augmenter.forward = lambda _images: [v[rows].clone() for v in views]  # type: ignore[method-assign]
    losses = method(Batch(images()[rows]))
    losses["loss"].backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in method.parameters()]
    return {k: v.detach() for k, v in losses.items()}, grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {case: _losses_and_grads(make_method(*extra).eval(), rows) for case, extra in CASES.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_distributed_losses_and_gradients_are_the_global_batchs(tmp_path: Path) -> None:
    """Two processes on half batches: the mean of their losses and of their gradients (DDP's average) equals one
    process on the whole batch; the columns are gathered, so the contrast and entropy are the global batch's."""
    single = {
        case: _losses_and_grads(make_method(*extra).eval(), slice(None)) for case, extra in CASES.items()
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for case, (losses, grads) in single.items():
        for key, value in losses.items():
            mean = sum(r[case][0][key] for r in ranks) / WORLD
            torch.testing.assert_close(mean, value, atol=1e-5, rtol=1e-5, msg=f"{case} {key}")
        for i, grad in enumerate(grads):
            mean = sum(r[case][1][i] for r in ranks) / WORLD
            torch.testing.assert_close(mean, grad, atol=1e-5, rtol=1e-4, msg=f"{case} parameter {i}")
