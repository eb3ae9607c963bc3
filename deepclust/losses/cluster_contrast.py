"""CC's cluster-level contrast of assignment columns, and the entropy of the cluster marginal."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deepclust.distributed import all_gather_with_grad

ENTROPY_VARIANTS = ("code", "paper")


def cluster_contrastive_loss(
    p_a: Tensor, p_b: Tensor, temperature: float = 1.0, gather: bool = False
) -> Tensor:
    """Contrast the K columns of the two views' N×K assignment matrices (Li et al. 2021, Eq. 5–6).

    Column k of ``p_a`` (cluster k's "representation" over the batch) is pulled towards column k of ``p_b`` and
    pushed from the other 2K − 2 columns: NT-Xent over 2K column vectors with cosine similarity and τ_C. With
    ``gather=True`` the columns span the global batch (every rank then computes the same loss).
    """
    if gather:
        p_a, p_b = all_gather_with_grad(p_a), all_gather_with_grad(p_b)
    columns = F.normalize(torch.cat([p_a.float().T, p_b.float().T]), dim=1)  # 2K×N
    k = p_a.shape[1]
    logits = columns @ columns.T / temperature
    index = torch.arange(2 * k, device=logits.device)
    logits = logits.masked_fill(index[:, None] == index[None, :], float("-inf"))
    positive = (index + k) % (2 * k)
    return F.cross_entropy(logits, positive)


def cluster_entropy(p: Tensor) -> Tensor:
    """H(P) of the batch's cluster marginal P = Σ_i p_i / Σ_ik p_ik (natural log)."""
    marginal = p.float().sum(dim=0)
    marginal = marginal / marginal.sum()
    return -(marginal * torch.log(marginal.clamp_min(1e-12))).sum()


def cc_entropy_term(p_a: Tensor, p_b: Tensor, variant: str = "code") -> Tensor:
    """CC's anti-collapse term, to be *added* to the loss (minimising it maximises the marginal entropy).

    * ``"code"``: ``[log K − H(P_a)] + [log K − H(P_b)]`` with each view's marginal normalised on its own — what
      the authors' code computes, and what they acknowledge as correct (CC issue #4); ≥ 0, 0 when uniform.
    * ``"paper"``: ``−H(Y)`` with one marginal over both views' assignments jointly (Eq. 5 as printed).
    """
    if variant == "code":
        log_k = math.log(p_a.shape[1])
        return (log_k - cluster_entropy(p_a)) + (log_k - cluster_entropy(p_b))
    if variant == "paper":
        return -cluster_entropy(torch.cat([p_a, p_b]))
    raise ValueError(f"entropy variant must be one of {ENTROPY_VARIANTS}, got {variant!r}")
