"""C2BIN's losses: the instance alignment (Eq. 1), the contrast of batch-wise cluster assignments (Eq. 4) and the
entropy of the cluster masses (Eq. 5).

Equation numbers are those of the paper ("Learning Representations by Contrasting Clusters While Bootstrapping
Instances", ICLR 2021 submission). Eq. 4 as printed differs from CC's cluster-level contrast
(:func:`~deepclust.losses.cluster_contrastive_loss`) in which columns are negatives and whether the positive is in
the denominator; :func:`bca_contrast` computes both forms (docs/methods/c2bin.md, "Choices").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepclust.distributed import all_gather_with_grad
from deepclust.losses.byol import byol_loss
from deepclust.losses.cluster_contrast import cluster_mass, entropy

#: the negatives of an anchor column: the other view's other columns (Eq. 4 as printed), or every other column
#: of both views (CC's cluster-level contrast, NT-Xent over the 2K columns)
BCA_NEGATIVES = ("other_view", "both_views")
#: the similarity of two columns in Eq. 4: the cosine (CC's; what τ = 0.5 or 1.0 suits) or the plain dot product
BCA_SIMILARITIES = ("cosine", "dot")
#: which cluster masses s the entropy of Eq. 5 is taken of: each view's, averaged or summed, or both views' pooled
ENTROPY_VIEWS = ("mean", "sum", "pooled")


def alignment_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Eq. 1, ``L_align = 1 − ⟨P_θ(z'), z''⟩ / (‖P_θ(z')‖·‖z''‖)``, averaged over the batch.

    ``prediction`` is the runner's ``P_θ(G_θ(F_θ(x')))`` and ``target`` the follower's ``G_φ(F_φ(x''))``, both
    N×D; the target gets no gradient. Half of BYOL's normalised MSE ``2 − 2·cos``; symmetrising it over the two
    views is the method's job.
    """
    return 0.5 * byol_loss(prediction, target)


def bca_contrast(
    c_a: Tensor,
    c_b: Tensor,
    temperature: float = 1.0,
    *,
    negatives: str = "other_view",
    positive_in_denominator: bool = False,
    similarity: str = "cosine",
    symmetric: bool = True,
    gather: bool = False,
) -> Tensor:
    """The contrastive loss between batch-wise cluster assignments, ``L^bca_clust`` (Eq. 2–4).

    ``c_a`` and ``c_b`` are the two views' N×K soft assignments (softmax of the cluster predictor ``P_c,k``). The
    BCA ``c_k`` (Eq. 3) is column k, how much cluster k is taken by the batch. Anchor column ``c'_i`` has the
    positive ``c''_i``, the same column of the other view. As printed (the defaults)::

        L = (1/K) Σ_i −log  exp(s(c'_i, c''_i)/τ) / Σ_{j=1..K} 1[j≠i] exp(s(c'_i, c''_j)/τ)

    the negatives are the other view's other K − 1 columns and the positive is not in the denominator. Options:

    * ``negatives="both_views"``: the anchor's own view's other columns are negatives too (2K − 2 of them);
    * ``positive_in_denominator=True``: the denominator also holds the positive (the usual InfoNCE);
    * ``similarity="dot"``: ``s`` is the plain dot product of the columns instead of their cosine;
    * ``symmetric=False``: only the first view's columns are anchors (Eq. 4's ``c'_i``); by default both views'
      are, and the loss is the mean over the 2K anchors.

    With ``negatives="both_views"``, ``positive_in_denominator=True``, the cosine and ``symmetric=True`` this is
    CC's cluster-level contrast, :func:`~deepclust.losses.cluster_contrastive_loss`.

    With ``gather=True`` the assignments are all-gathered (with gradients) first, so that the columns span the
    global batch; every rank computes the same loss. Leading dimensions (``…×N×K``) are independent problems.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if c_a.shape != c_b.shape or c_a.dim() < 2:
        raise ValueError(f"c_a and c_b must both be N×K, got {tuple(c_a.shape)} and {tuple(c_b.shape)}")
    if negatives not in BCA_NEGATIVES:
        raise ValueError(f"negatives must be one of {BCA_NEGATIVES}, got {negatives!r}")
    if similarity not in BCA_SIMILARITIES:
        raise ValueError(f"similarity must be one of {BCA_SIMILARITIES}, got {similarity!r}")
    if c_a.shape[-1] < 2:
        raise ValueError(f"the contrast of cluster columns needs at least 2 clusters, got {c_a.shape[-1]}")
    dtype = torch.promote_types(c_a.dtype, torch.float32)
    if gather:  # along the samples, the second-to-last dimension
        c_a, c_b = (all_gather_with_grad(c.movedim(-2, 0)).movedim(0, -2) for c in (c_a, c_b))
    k = c_a.shape[-1]
    columns = torch.cat([c_a.mT, c_b.mT], dim=-2).to(dtype)  # (…×)2K×N: view a's columns, then view b's
    if similarity == "cosine":
        columns = F.normalize(columns, dim=-1)
    logits = (columns / temperature) @ columns.mT  # (…×)2K×2K
    index = torch.arange(2 * k, device=logits.device)
    partner = (index + k) % (2 * k)  # the positive of anchor i: the same column of the other view
    same_view = (index[:, None] < k) == (index[None, :] < k)
    # what no denominator holds: the anchor itself; with "other_view" its whole view; unless asked, the positive
    excluded = index[:, None] == index[None, :]
    if negatives == "other_view":
        excluded = excluded | same_view
    if not positive_in_denominator:
        excluded = excluded | (index[None, :] == partner[:, None])
    positive = logits.gather(-1, partner.expand(*logits.shape[:-1])[..., None]).squeeze(-1)
    losses = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=-1) - positive  # (…×)2K
    if not symmetric:
        losses = losses[..., :k]
    return losses.mean(dim=-1)


def bca_entropy(c_a: Tensor, c_b: Tensor, views: str = "mean", gather: bool = False) -> Tensor:
    """``H(s)`` of Eq. 5 (natural log; ``log K`` when ``s`` is uniform), which the cluster loss *subtracts*.

    ``s_k = Σ_i c_k(i)`` is the mass of cluster k over the batch, normalised to a distribution. The paper takes
    one ``s`` without saying of which view; ``views`` chooses:

    * ``"mean"``: ``½[H(s') + H(s'')]``, each view's masses on their own (the default);
    * ``"sum"``: ``H(s') + H(s'')``; ``2 log K`` minus it is CC's entropy term as its code computes it
      (:func:`~deepclust.losses.cc_entropy_term` with ``variant="code"``);
    * ``"pooled"``: ``H(s' + s'')``, the two views' masses added before normalising.

    With ``gather=True`` the masses are those of the global batch (only the K sums are gathered). Leading
    dimensions give one entropy each.
    """
    if c_a.shape != c_b.shape or c_a.dim() < 2:
        raise ValueError(f"c_a and c_b must both be N×K, got {tuple(c_a.shape)} and {tuple(c_b.shape)}")
    mass_a, mass_b = cluster_mass(c_a, gather), cluster_mass(c_b, gather)
    if views == "mean":
        return 0.5 * (entropy(mass_a) + entropy(mass_b))
    if views == "sum":
        return entropy(mass_a) + entropy(mass_b)
    if views == "pooled":
        return entropy(mass_a + mass_b)
    raise ValueError(f"views must be one of {ENTROPY_VIEWS}, got {views!r}")
