"""Each loss against its paper formula on hand-computed cases, a naive loop reference, and its properties."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from deepclust.losses import (
    NTXentLoss,
    byol_loss,
    cc_entropy_term,
    cluster_contrastive_loss,
    cluster_entropy,
    cluster_prototypes,
    nearest_neighbour_contrast,
    nt_xent,
    prototype_scattering_loss,
    sinkhorn,
    swav_loss,
)

# the module, which `deepclust.losses.sinkhorn` (the function) hides
sinkhorn_module = importlib.import_module("deepclust.losses.sinkhorn")

# ---------------------------------------------------------------- naive references, written from the equations


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    return dot / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))


def naive_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> float:
    """SimCLR Eq. 1 as a loop over the 2N anchors, in Python floats."""
    z = torch.cat([z_a, z_b]).tolist()
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(cosine(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total -= math.log(math.exp(cosine(z[i], z[positive]) / tau) / denominator)
    return total / (2 * n)


def naive_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp (appendix A.1) element by element, in Python floats (K×B as in the paper)."""
    s = scores.tolist()
    b, k = len(s), len(s[0])
    q = [[math.exp(s[j][i] / epsilon) for j in range(b)] for i in range(k)]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / (sum(row) * k) for x in row] for row in q]
        column = [sum(q[i][j] for i in range(k)) for j in range(b)]
        q = [[q[i][j] / (column[j] * b) for j in range(b)] for i in range(k)]
    return torch.tensor([[q[i][j] * b for i in range(k)] for j in range(b)], dtype=torch.float64)


def log_space_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The same algorithm entirely on log-scores in float64: exact where exp(s/ε) would overflow."""
    log_q = scores.double().T / epsilon
    k, b = log_q.shape
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b)
    return (log_q + math.log(b)).exp().T


def naive_entropy(p: torch.Tensor) -> float:
    mass = [sum(column) for column in zip(*p.tolist(), strict=True)]
    return -sum(m / sum(mass) * math.log(m / sum(mass)) for m in mass)


def unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


# ---------------------------------------------------------------- NT-Xent


def test_nt_xent_hand_computed_on_the_circle() -> None:
    # a0, b0, a1, b1 at 0, π/3, π/2, π (lengths 3: the loss normalises). τ = 0.5 doubles every cosine.
    z_a = 3 * torch.tensor([unit(0), unit(math.pi / 2)])
    z_b = 3 * torch.tensor([unit(math.pi / 3), unit(math.pi)])
    e = math.exp
    r3 = math.sqrt(3)
    # anchor: −log e^{2 s(pos)} / Σ_{k≠i} e^{2 s(k)}
    l_a0 = -math.log(e(1) / (e(1) + e(0) + e(-2)))  # s(b0)=½, s(a1)=0, s(b1)=−1
    l_b0 = -math.log(e(1) / (e(1) + e(r3) + e(-1)))  # s(a0)=½, s(a1)=√3/2, s(b1)=−½
    l_a1 = -math.log(e(0) / (e(0) + e(0) + e(r3)))  # s(b1)=0, s(a0)=0, s(b0)=√3/2
    l_b1 = -math.log(e(0) / (e(0) + e(-2) + e(-1)))  # s(a1)=0, s(a0)=−1, s(b0)=−½
    expected = (l_a0 + l_b0 + l_a1 + l_b1) / 4
    assert nt_xent(z_a, z_b, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nearest_neighbour_contrast_hand_computed() -> None:
    # NN(z_0) = (1, 0), NN(z_1) = (0, 1); positives z⁺_0 = (0.6, 0.8), z⁺_1 = (1, 0), scaled (the loss
    # normalises both). τ = 0.5 doubles every cosine: anchor 0 scores (1.2, 2) and takes key 0, anchor 1 scores
    # (1.6, 0) and takes key 1.
    neighbours = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    positives = torch.tensor([[0.3, 0.4], [3.0, 0.0]], requires_grad=True)
    e = math.exp
    l_0 = -1.2 + math.log(e(1.2) + e(2.0))
    l_1 = -0.0 + math.log(e(1.6) + e(0.0))
    loss = nearest_neighbour_contrast(neighbours, positives, temperature=0.5)
    assert loss.item() == pytest.approx((l_0 + l_1) / 2, rel=1e-6)
    loss.backward()
    assert positives.grad is not None and positives.grad.abs().sum() > 0


def test_nearest_neighbour_contrast_gives_the_neighbours_no_gradient_and_checks_arguments() -> None:
    neighbours = torch.randn(4, 3, requires_grad=True)
    nearest_neighbour_contrast(neighbours, torch.randn(4, 3, requires_grad=True)).backward()
    assert neighbours.grad is None
    with pytest.raises(ValueError, match="temperature"):
        nearest_neighbour_contrast(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)
    with pytest.raises(ValueError, match="N×D"):
        nearest_neighbour_contrast(torch.randn(4, 3), torch.randn(5, 3))
    half = nearest_neighbour_contrast(torch.randn(4, 3).bfloat16(), torch.randn(4, 3).bfloat16())
    assert half.dtype == torch.float32


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_reference_and_is_symmetric(n: int, tau: float) -> None:
    generator = torch.Generator().manual_seed(n)
    z_a, z_b = torch.randn(n, 5, generator=generator), torch.randn(n, 5, generator=generator)
    loss = nt_xent(z_a, z_b, tau)
    assert loss.item() == pytest.approx(naive_nt_xent(z_a, z_b, tau), rel=1e-5, abs=1e-6)
    assert nt_xent(z_b, z_a, tau).item() == pytest.approx(loss.item(), rel=1e-6)
    assert NTXentLoss(tau)(z_a, z_b).item() == loss.item()


def test_nt_xent_is_minimal_for_identical_views_with_orthogonal_negatives() -> None:
    # a_i = e_i; b_i is a_i rotated by θ into a fresh axis e_{N+i}, so every negative stays orthogonal and
    # each anchor's loss is −log e^{cos θ/τ} / (e^{cos θ/τ} + 2N − 2): smallest at θ = 0 (identical views)
    n, tau = 3, 0.5
    eye = torch.eye(2 * n)
    losses = []
    for theta in (0.0, 0.3, 0.8, 1.5):
        z_b = math.cos(theta) * eye[:n] + math.sin(theta) * eye[n:]
        loss = nt_xent(eye[:n], z_b, tau).item()
        pos = math.exp(math.cos(theta) / tau)
        assert loss == pytest.approx(-math.log(pos / (pos + 2 * n - 2)), rel=1e-6)
        losses.append(loss)
    assert losses == sorted(losses) and losses[0] < losses[1]


def test_nt_xent_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    z_b = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z_a, z_b))


def test_nt_xent_half_precision_and_arguments() -> None:
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    loss = nt_xent(z_a.bfloat16(), z_b.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z_a.bfloat16().float(), z_b.bfloat16().float()).item())
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z_a, z_b, temperature=0.0)
    with pytest.raises(ValueError, match="N×D"):
        nt_xent(z_a, z_b[:5])


# ---------------------------------------------------------------- BYOL


def test_byol_loss_hand_computed_and_stops_target_gradient() -> None:
    p = torch.tensor([[1.0, 0.0], unit(math.pi / 3)], requires_grad=True)
    t = torch.tensor([[0.0, 2.0], [5.0, 0.0]], requires_grad=True)
    # cosines 0 and ½: mean(2 − 0, 2 − 1) = 1.5
    loss = byol_loss(p, t)
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert t.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def test_byol_loss_matches_naive_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    p, t = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    expected = sum(2 - 2 * cosine(u, v) for u, v in zip(p.tolist(), t.tolist(), strict=True)) / 7
    assert byol_loss(p, t).item() == pytest.approx(expected, rel=1e-6)
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize("max_subtract", [True, False])
def test_sinkhorn_hand_computed_one_iteration(max_subtract: bool) -> None:
    # scores [[1, 0], [0, 0]], ε = 1, one round. Q = [[e, 1], [1, 1]] (K×B); rows to ½, then columns:
    # sample 0 gets (2e, e + 1)/(3e + 1), sample 1 gets (2, e + 1)/(e + 3)
    e = math.e
    q = sinkhorn(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), epsilon=1.0, iterations=1, max_subtract=max_subtract)
    expected = torch.tensor([[2 * e / (3 * e + 1), (e + 1) / (3 * e + 1)], [2 / (e + 3), (e + 1) / (e + 3)]])
    torch.testing.assert_close(q, expected)
    # equal scores everywhere: the equipartition is uniform
    torch.testing.assert_close(sinkhorn(torch.zeros(3, 4), iterations=3), torch.full((3, 4), 0.25))


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("max_subtract", [True, False])
def test_sinkhorn_matches_naive_reference(iterations: int, max_subtract: bool) -> None:
    generator = torch.Generator().manual_seed(iterations)
    scores = (
        F.normalize(torch.randn(12, 6, generator=generator), dim=1)
        @ F.normalize(torch.randn(5, 6, generator=generator), dim=1).T
    )
    q = sinkhorn(scores, epsilon=0.05, iterations=iterations, max_subtract=max_subtract)
    assert q.dtype == torch.float32 and q.shape == (12, 5)
    torch.testing.assert_close(q.double(), naive_sinkhorn(scores, 0.05, iterations), rtol=1e-5, atol=1e-6)


def test_sinkhorn_marginals_and_no_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 8, generator=generator).tanh().requires_grad_()
    before = scores.detach().clone()
    q = sinkhorn(scores, epsilon=0.05, iterations=200)
    assert not q.requires_grad and torch.equal(scores, before)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64))
    # converged: every prototype gets B/K of the codes' mass
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 64 / 8), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sinkhorn_half_precision_input_gives_float32_accurate_codes(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = (
        F.normalize(torch.randn(32, 16, generator=generator), dim=1)
        @ F.normalize(torch.randn(10, 16, generator=generator), dim=1).T
    )
    low = scores.to(dtype)
    q = sinkhorn(low)
    assert q.dtype == torch.float32
    # accurate to float32 for the scores as given (exp(1/0.05) alone would overflow fp16)
    torch.testing.assert_close(q.double(), log_space_sinkhorn(low, 0.05, 3), rtol=1e-5, atol=1e-6)


def test_sinkhorn_ignores_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its matrix-vector products run with autocast off (CPU autocast leaves ``mv`` in float32 anyway, so the
    check is on the state the computation sees; on CUDA, fp16 would overflow)."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 5, generator=generator).tanh()
    autocast_seen: list[bool] = []
    compute = sinkhorn_module._scaled_codes

    def spy(*args: Any) -> torch.Tensor:
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return compute(*args)

    monkeypatch.setattr(sinkhorn_module, "_scaled_codes", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(scores)
    assert autocast_seen == [False]
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn(scores))


def test_sinkhorn_is_finite_and_exact_for_huge_scores() -> None:
    # |s|/ε up to 1e3: exp overflows, and after a global shift whole prototypes/samples would underflow to 0
    generator = torch.Generator().manual_seed(0)
    scores = 50 * (2 * torch.rand(40, 6, generator=generator) - 1)
    q = sinkhorn(scores, epsilon=0.05)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(40))
    torch.testing.assert_close(q.double(), log_space_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
    # ConCURL's unguarded copy overflows on the same input
    assert not torch.isfinite(sinkhorn(scores, epsilon=0.05, max_subtract=False)).all()


def test_sinkhorn_arguments() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(2, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.zeros(2, 2), iterations=0)


# ---------------------------------------------------------------- SwAV


def test_swav_loss_hand_computed_with_one_hot_codes() -> None:
    s1, s2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # τ = 0.5: ℓ(s1, q2) = −log softmax(2·s1)[1] = log(1 + e²); ℓ(s2, q1) is the same by symmetry
    assert swav_loss([s1, s2], [q1, q2], 0.5).item() == pytest.approx(math.log(1 + math.e**2), rel=1e-6)


def test_swav_loss_with_one_hot_codes_is_the_swapped_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(9, 4, generator=generator) for _ in range(2)]
    labels = [torch.randint(4, (9,), generator=generator) for _ in range(2)]
    codes = [F.one_hot(y, 4).float() for y in labels]
    expected = (F.cross_entropy(scores[0] / 0.1, labels[1]) + F.cross_entropy(scores[1] / 0.1, labels[0])) / 2
    torch.testing.assert_close(swav_loss(scores, codes, 0.1), expected)


def test_swav_loss_matches_naive_reference_over_three_views() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = [torch.randn(5, 4, generator=generator, requires_grad=True) for _ in range(3)]
    codes = [torch.softmax(torch.randn(5, 4, generator=generator), 1).requires_grad_() for _ in range(3)]
    tau = 0.2
    total = 0.0
    for t in range(3):
        for s in range(3):
            if s == t:
                continue
            for z, q in zip(scores[s].tolist(), codes[t].tolist(), strict=True):
                log_norm = math.log(sum(math.exp(x / tau) for x in z))
                total -= sum(qk * (zk / tau - log_norm) for qk, zk in zip(q, z, strict=True)) / 5
    loss = swav_loss(scores, codes, tau)
    assert loss.item() == pytest.approx(total / 6, rel=1e-6)
    loss.backward()
    assert all(s.grad is not None for s in scores) and all(q.grad is None for q in codes)


def test_swav_loss_multi_crop_predicts_the_assignment_views_codes_from_all_others() -> None:
    # three views, codes for the first two (SwAV's crops_for_assign), τ = 1:
    # ℓ(s2, q1) = ℓ(s1, q2) = log(1 + e) and ℓ(s3, q1) = ℓ(s3, q2) = log 2 (s3 scores both prototypes 0);
    # loss = (1/2) Σ_t (1/2) Σ_{s≠t} ℓ(s, q_t) = (log(1 + e) + log 2) / 2
    scores = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]])]
    codes = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    expected = (math.log(1 + math.e) + math.log(2)) / 2
    assert swav_loss(scores, codes, 1.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("views,assigned", [(1, 1), (2, 0), (2, 3)])
def test_swav_loss_rejects_bad_view_counts(views: int, assigned: int) -> None:
    scores = [torch.zeros(2, 3) for _ in range(views)]
    with pytest.raises(ValueError, match="swav_loss needs"):
        swav_loss(scores, [torch.full((2, 3), 1 / 3) for _ in range(assigned)])


# ---------------------------------------------------------------- CC: cluster contrast and entropy


def test_cluster_contrast_hand_computed_on_separated_assignments() -> None:
    # identical, perfectly separated one-hot assignments (2 samples per cluster, K = 3): every column has
    # cosine 1 with its positive and 0 with the 2K − 2 = 4 negatives
    p = F.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3).float()
    for tau in (1.0, 0.5):
        expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 4))
        assert cluster_contrastive_loss(p, p, temperature=tau).item() == pytest.approx(expected, rel=1e-6)


def test_cluster_contrast_matches_naive_reference_on_columns() -> None:
    generator = torch.Generator().manual_seed(1)
    a = torch.softmax(torch.randn(7, 3, generator=generator), 1)
    b = torch.softmax(torch.randn(7, 3, generator=generator), 1)
    # CC Eq. 4–5: the anchors are the 2K columns, compared by cosine similarity
    assert cluster_contrastive_loss(a, b, 1.0).item() == pytest.approx(naive_nt_xent(a.T, b.T, 1.0), rel=1e-5)


def test_cluster_losses_of_stacked_heads_are_each_heads_own() -> None:
    """H×N×K assignments (CC's heads side by side) give each head's 2-D loss, with the same gradients."""
    generator = torch.Generator().manual_seed(2)
    p_a = torch.softmax(torch.randn(3, 16, 5, generator=generator), -1).requires_grad_()
    p_b = torch.softmax(torch.randn(3, 16, 5, generator=generator), -1).requires_grad_()
    weights = torch.rand(3, generator=generator)  # a different weight per head checks the gradients' routing
    terms: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = [
        ("contrast", lambda a, b: cluster_contrastive_loss(a, b, 0.7)),
        ("entropy, code", lambda a, b: cc_entropy_term(a, b, "code")),
        ("entropy, paper", lambda a, b: cc_entropy_term(a, b, "paper")),
    ]
    for name, term in terms:
        stacked = term(p_a, p_b)
        each = torch.stack([term(p_a[h], p_b[h]) for h in range(3)])
        assert stacked.shape == (3,), name
        torch.testing.assert_close(stacked, each, msg=name)
        grads = torch.autograd.grad((weights * stacked).sum(), (p_a, p_b))
        expected = torch.autograd.grad((weights * each).sum(), (p_a, p_b))
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, want, msg=name)
    with pytest.raises(ValueError, match="N×K"):
        cluster_contrastive_loss(p_a[None], p_b[None])


def test_entropy_of_the_uniform_marginal_is_log_k() -> None:
    uniform = torch.full((4, 5), 0.2)
    assert cluster_entropy(uniform).item() == pytest.approx(math.log(5))
    assert cc_entropy_term(uniform, uniform, "code").item() == pytest.approx(0.0, abs=1e-6)
    # the paper's joint normalisation spreads the mass over 2K entries
    assert cc_entropy_term(uniform, uniform, "paper").item() == pytest.approx(-math.log(10))


def test_entropy_terms_on_the_example_of_cc_issue_4() -> None:
    y = torch.tensor([[0.98, 0.01, 0.01]] * 4)
    c_a, c_b = y[:2], y[2:]
    h = -(0.98 * math.log(0.98) + 2 * 0.01 * math.log(0.01))  # per-view marginal is (0.98, 0.01, 0.01)
    assert cc_entropy_term(c_a, c_b, "code").item() == pytest.approx(2 * (math.log(3) - h), rel=1e-5)  # 1.97
    # paper: each view's masses over the joint total 4 → (0.49, 0.005, 0.005) twice
    joint = 2 * (0.49 * math.log(0.49) + 2 * 0.005 * math.log(0.005))
    assert cc_entropy_term(c_a, c_b, "paper").item() == pytest.approx(joint, rel=1e-5)


def test_entropy_terms_match_naive_reference() -> None:
    generator = torch.Generator().manual_seed(2)
    a = torch.softmax(torch.randn(9, 4, generator=generator), 1)
    b = torch.softmax(3 * torch.randn(9, 4, generator=generator), 1)
    h_a, h_b = naive_entropy(a), naive_entropy(b)
    assert cluster_entropy(a).item() == pytest.approx(h_a, rel=1e-6)
    code = cc_entropy_term(a, b, "code").item()
    assert code == pytest.approx(2 * math.log(4) - h_a - h_b, rel=1e-5)
    paper = cc_entropy_term(a, b, "paper").item()
    assert paper == pytest.approx(-(h_a + h_b) / 2 - math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="entropy variant"):
        cc_entropy_term(a, b, "other")


def test_entropy_of_a_collapsed_batch_has_finite_gradient() -> None:
    logits = torch.tensor([[30.0, -30.0, -30.0]] * 4, requires_grad=True)
    p = torch.softmax(logits, 1)
    term = cc_entropy_term(p, p, "code")
    assert term.item() == pytest.approx(2 * math.log(3), rel=1e-4)  # both marginals one-hot
    term.backward()
    assert torch.isfinite(logits.grad).all()
    exact_zero = torch.tensor([[1.0, 0.0]] * 3, requires_grad=True)
    cluster_entropy(exact_zero).backward()
    assert torch.isfinite(exact_zero.grad).all()


# ---------------------------------------------------------------------------------------- prototype scattering


def test_cluster_prototypes_are_normalised_means_and_absent_clusters_are_zero() -> None:
    z = torch.tensor([[3.0, 0.0], [1.0, 2.0], [0.0, -4.0]])
    prototypes, present = cluster_prototypes(z, torch.tensor([0, 0, 2]), 3)
    # cluster 0: mean (2, 1) -> (2, 1)/√5; cluster 1 is empty; cluster 2: (0, −1)
    torch.testing.assert_close(prototypes[0], torch.tensor([2.0, 1.0]) / math.sqrt(5))
    torch.testing.assert_close(prototypes[1], torch.zeros(2))
    torch.testing.assert_close(prototypes[2], torch.tensor([0.0, -1.0]))
    assert present.tolist() == [True, False, True]


def test_prototype_scattering_hand_computed() -> None:
    """Two clusters in 2-d, τ = ½: online prototypes μ0 = (1, 0), μ1 = (0, 1); target μ'0 = (1, 0),
    μ'1 = (1, 1)/√2. Row k: positive μ_k·μ'_k/τ, negative μ_k·μ_j/τ = 0 (online prototypes orthogonal)."""
    online = torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.0, 3.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [4.0, 0.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = prototype_scattering_loss(online, target, labels, num_clusters=2, temperature=0.5)
    row0 = -2.0 + math.log(math.exp(2.0) + 1.0)
    row1 = -math.sqrt(2.0) + math.log(1.0 + math.exp(math.sqrt(2.0)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    assert target.grad is None and online.grad is not None and online.grad.abs().sum() > 0


def test_prototype_scattering_ignores_absent_clusters_and_matches_naive_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    online, target = torch.randn(2, 12, 5, generator=generator)
    labels = torch.tensor([0, 3, 3, 5, 0, 5, 3, 0, 5, 5, 3, 0])  # clusters 1, 2, 4 absent
    loss = prototype_scattering_loss(online, target, labels, num_clusters=6, temperature=0.3)
    on, tg = F.normalize(online, dim=1), F.normalize(target, dim=1)
    mu = {k: F.normalize(on[labels == k].mean(0), dim=0) for k in (0, 3, 5)}
    mu_t = {k: F.normalize(tg[labels == k].mean(0), dim=0) for k in (0, 3, 5)}
    total = 0.0
    for k in mu:
        positive = math.exp(float(mu[k] @ mu_t[k]) / 0.3)
        negatives = sum(math.exp(float(mu[k] @ mu[j]) / 0.3) for j in mu if j != k)
        total -= math.log(positive / (positive + negatives))
    assert loss.item() == pytest.approx(total / 3, rel=1e-5)
    # the same batch labelled into 3 clusters only gives the same loss
    relabelled = torch.tensor([0, 1, 1, 2, 0, 2, 1, 0, 2, 2, 1, 0])
    assert prototype_scattering_loss(online, target, relabelled, 3, 0.3).item() == pytest.approx(loss.item())


def test_prototype_scattering_arguments() -> None:
    with pytest.raises(ValueError, match="N×D"):
        prototype_scattering_loss(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one entry per row"):
        prototype_scattering_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one entry per row"):
        prototype_scattering_loss(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2)
    # a single present cluster has nothing to scatter from
    single = prototype_scattering_loss(
        torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 2
    )
    assert single.item() == pytest.approx(0.0)


def test_prototype_scattering_runs_in_float32_under_autocast() -> None:
    generator = torch.Generator().manual_seed(1)
    online, target = torch.randn(2, 16, 8, generator=generator)
    labels = torch.arange(16) % 4
    exact = prototype_scattering_loss(online, target, labels, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = prototype_scattering_loss(online, target, labels, 4)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(exact.item(), abs=1e-6)
