"""CC's cluster-level contrast of assignment columns, and the entropy of the cluster marginal."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deepclust.distributed import all_gather_with_grad
from deepclust.losses.nt_xent import two_view_contrast

ENTROPY_VARIANTS = ("code", "paper")


def cluster_contrastive_loss(
    p_a: Tensor, p_b: Tensor, temperature: float = 1.0, gather: bool = False
) -> Tensor:
    """CC's cluster-level contrast, the ℓ̂ part of L_clu (Li et al. 2021, Eq. 4–6; the −H(Y) part is separate).

    ``p_a`` and ``p_b`` are the two views' N×K soft assignments (CC applies the soft-max inside the head, before
    this loss). Column k, cluster k's "representation" over the batch, is pulled towards column k of the other
    view and pushed from the other 2K − 2 columns: NT-Xent over the 2K column vectors with cosine similarity
    (the columns are L2-normalised here) and temperature τ_C, averaged over the 2K anchors — CC's
    ``CrossEntropy(sum) / 2K``. Add the anti-collapse term with :func:`cc_entropy_term`.

    With ``gather=True`` the assignments are all-gathered (with gradients) first, so a cluster's column spans
    the global batch; every rank then computes the same loss, and DDP's averaging of the gradients, together
    with the gather's summed backward, gives the single-process gradient of the global batch.

    H×N×K inputs (several cluster heads on the same samples) give the H heads' losses at once.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if p_a.shape != p_b.shape or p_a.dim() not in (2, 3):
        raise ValueError(
            f"p_a and p_b must both be N×K (or H×N×K), got {tuple(p_a.shape)} and {tuple(p_b.shape)}"
        )
    dtype = torch.promote_types(p_a.dtype, torch.float32)
    if gather:  # along the samples, which come first only without a head dimension
        p_a, p_b = (all_gather_with_grad(p.movedim(-2, 0)).movedim(0, -2) for p in (p_a, p_b))
    columns = F.normalize(torch.cat([p_a.mT, p_b.mT], dim=-2).to(dtype), dim=-1)  # (H×)2K×N
    return two_view_contrast(columns, columns, 0, temperature)


def cluster_mass(p: Tensor, gather: bool = False) -> Tensor:
    """Σ_i p_i, the K cluster masses of the (global, with ``gather``) batch, in at least float32 (H×K for H×N×K
    assignments)."""
    mass = p.to(torch.promote_types(p.dtype, torch.float32)).sum(dim=-2)
    # gathering the K sums, not the N×K assignments: the entropy needs only the masses
    return all_gather_with_grad(mass[None]).sum(dim=0) if gather else mass


def entropy(mass: Tensor) -> Tensor:
    """Shannon entropy (natural log) of the distribution proportional to the non-negative ``mass`` (over its
    last dimension; one entropy per leading index)."""
    probability = mass / mass.sum(dim=-1, keepdim=True)
    # an empty cluster contributes 0·log 0 = 0; the clamp keeps its gradient finite (CC's code would give NaN)
    return -(probability * probability.clamp_min(torch.finfo(probability.dtype).tiny).log()).sum(dim=-1)


def cluster_entropy(p: Tensor, gather: bool = False) -> Tensor:
    """H(P) of the batch's cluster marginal ``P = p.sum(0) / p.sum()`` (natural log; ``log K`` when uniform).

    CC prevents the trivial solution (every sample in one cluster) by maximising this entropy. Its code and its
    paper normalise differently (see :func:`cc_entropy_term`, which implements both):

    * code: ``[log K − H(P_a)] + [log K − H(P_b)]``, each view's marginal normalised on its own; ``log K`` only
      makes the term non-negative (CC issue #34), and the authors call the code the correct version (issue #4);
    * paper (L_clu's H(Y) as printed): ``−H(Y)`` with ``P(y_k^v) = Σ_t Y_tk^v / ‖Y‖₁``, ‖Y‖₁ over *both* views, i.e.
      the entropy of one 2K-entry distribution, and no ``log K``.

    With ``gather=True`` the marginal is that of the global batch across ranks (differentiably).
    """
    return entropy(cluster_mass(p, gather))


def cc_entropy_term(p_a: Tensor, p_b: Tensor, variant: str = "code", gather: bool = False) -> Tensor:
    """CC's anti-collapse term, to be *added* to the loss (minimising it maximises the marginal entropy).

    * ``"code"``: ``[log K − H(P_a)] + [log K − H(P_b)]`` with each view's marginal normalised on its own (what
      ``modules/contrastive_loss.py`` computes); ≥ 0, and 0 exactly when both marginals are uniform.
    * ``"paper"``: ``−H(Y) = Σ_k [P_a,k log P_a,k + P_b,k log P_b,k]`` with both views' masses normalised by
      their joint total (H(Y) as printed in L_clu, Eq. 4–6). This equals ``−½[H(P_a) + H(P_b)] − log 2``: half the code's
      gradient, shifted by a constant; its minimum, ``−log 2K``, is reached with uniform marginals.

    With ``gather=True`` the marginals are over the global batch (every rank computes the same term). H×N×K
    inputs give H terms.
    """
    mass_a, mass_b = cluster_mass(p_a, gather), cluster_mass(p_b, gather)
    if variant == "code":
        log_k = math.log(p_a.shape[-1])
        return (log_k - entropy(mass_a)) + (log_k - entropy(mass_b))
    if variant == "paper":
        return -entropy(torch.cat([mass_a, mass_b], dim=-1))
    raise ValueError(f"entropy variant must be one of {ENTROPY_VARIANTS}, got {variant!r}")
