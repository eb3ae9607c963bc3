"""Each loss against its paper formula on hand-computed cases, a naive reference, and its properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.losses import (
    byol_loss,
    cc_entropy_term,
    cluster_contrastive_loss,
    cluster_entropy,
    nt_xent,
    sinkhorn,
    swav_loss,
)


def naive_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 1 of SimCLR written as a loop over the 2N anchors."""
    z = F.normalize(torch.cat([z_a, z_b]).double(), dim=1)
    n = z_a.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(torch.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[j] / tau) / denominator)
    return total / (2 * n)


def test_nt_xent_hand_computed() -> None:
    # two orthogonal samples, both views identical: positive similarity 1, the two negatives 0 (τ = 1)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.e / (math.e + 2))
    assert nt_xent(z, z, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # at τ = 0.5 the same case gives -log(e² / (e² + 2))
    assert nt_xent(z, z, temperature=0.5).item() == pytest.approx(
        -math.log(math.e**2 / (math.e**2 + 2)), rel=1e-6
    )


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_naive_reference_and_is_symmetric(tau: float) -> None:
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    assert nt_xent(z_a, z_b, tau).item() == pytest.approx(naive_nt_xent(z_a, z_b, tau).item(), rel=1e-5)
    assert nt_xent(z_a, z_b, tau).item() == pytest.approx(nt_xent(z_b, z_a, tau).item(), rel=1e-6)


def test_nt_xent_gradcheck() -> None:
    torch.manual_seed(0)
    z_a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    # the loss computes in float32 internally; check gradients numerically against a float64 reference instead
    loss = nt_xent(z_a, z_b, 0.5)
    loss.backward()
    a, b = z_a.detach().clone().requires_grad_(), z_b.detach().clone().requires_grad_()
    naive_nt_xent(a, b, 0.5).backward()
    torch.testing.assert_close(z_a.grad, a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z_b.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_byol_loss_hand_computed_and_stops_target_gradient() -> None:
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    # cosines 0 and 1: mean(2 - 0, 2 - 2) = 1
    loss = byol_loss(p, t)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert t.grad is None and p.grad is not None


def test_sinkhorn_marginals_and_stability() -> None:
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(64, 8), dim=1) @ F.normalize(torch.randn(8, 8), dim=1).T
    q = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64))
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 8.0), rtol=1e-3, atol=1e-3)  # B/K each
    assert q.dtype == torch.float32
    bf16 = sinkhorn(scores.bfloat16(), iterations=3)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, sinkhorn(scores.bfloat16().float(), iterations=3))
    # cosine scores (max 0.94) at ε = 0.01 reach |s|/ε ≈ 94: exp overflows float32 without the max subtraction
    assert torch.isfinite(sinkhorn(scores, epsilon=0.01)).all()
    assert not torch.isfinite(sinkhorn(scores, epsilon=0.01, max_subtract=False)).all()


def test_sinkhorn_hand_computed_two_by_two() -> None:
    # scores equal everywhere: the equipartition is uniform, every code is 1/K
    q = sinkhorn(torch.zeros(2, 2), epsilon=1.0, iterations=3)
    torch.testing.assert_close(q, torch.full((2, 2), 0.5))


def test_swav_loss_hand_computed() -> None:
    s1 = torch.tensor([[1.0, 0.0]])
    s2 = torch.tensor([[0.0, 1.0]])
    q1 = torch.tensor([[1.0, 0.0]])
    q2 = torch.tensor([[0.0, 1.0]])
    tau = 0.5
    # ℓ(s1, q2) = -log softmax(s1/τ)[1] = log(1 + e²); ℓ(s2, q1) = the same by symmetry
    expected = math.log(1 + math.e**2)
    assert swav_loss([s1, s2], [q1, q2], tau).item() == pytest.approx(expected, rel=1e-6)


def test_cluster_contrast_hand_computed() -> None:
    # identical one-hot assignments, K = 2 with disjoint columns: positive cosine 1, the two negatives 0 (τ = 1)
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.e / (math.e + 2))
    assert cluster_contrastive_loss(p, p, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(1)
    a, b = torch.softmax(torch.randn(7, 3), 1), torch.softmax(torch.randn(7, 3), 1)
    assert cluster_contrastive_loss(a, b, 1.0).item() == pytest.approx(
        naive_nt_xent(a.T, b.T, 1.0).item(), rel=1e-5
    )


def test_entropy_terms() -> None:
    uniform = torch.full((4, 5), 0.2)
    assert cluster_entropy(uniform).item() == pytest.approx(math.log(5))
    assert cc_entropy_term(uniform, uniform, "code").item() == pytest.approx(0.0, abs=1e-6)
    assert cc_entropy_term(uniform, uniform, "paper").item() == pytest.approx(-math.log(5))
    collapsed = torch.tensor([[1.0, 0.0]] * 3)
    assert cc_entropy_term(collapsed, collapsed, "code").item() == pytest.approx(2 * math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="entropy variant"):
        cc_entropy_term(uniform, uniform, "other")
