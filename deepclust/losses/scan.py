"""SCAN's neighbour-consistency loss (Van Gansbeke et al., ECCV 2020, Eq. 2, first term)."""

from __future__ import annotations

import torch
from torch import Tensor


def neighbour_consistency(p_anchor: Tensor, p_neighbour: Tensor) -> Tensor:
    """``−1/N Σ_i log⟨Φ(X_i), Φ(k_i)⟩``: a sample and one of its mined neighbours should share a cluster.

    ``p_anchor`` and ``p_neighbour`` are N×K soft assignments (rows sum to one) of N anchors and of one
    neighbour ``k_i`` drawn from each anchor's mined set, the stochastic form of SCAN's sum over ``k ∈ N_X``.
    The dot product is largest when both are confident about the same cluster. SCAN's second term, the entropy
    of the mean assignment, is :func:`~deepclust.losses.cluster_contrast.cluster_entropy` and is subtracted
    with weight λ by the method. Computed in at least float32; the dot product is clamped away from 0 so a
    pair that disagrees completely gives a large but finite loss (SCAN's code passes it to ``BCELoss``, which
    clamps the log at −100).
    """
    if p_anchor.shape != p_neighbour.shape or p_anchor.dim() != 2:
        raise ValueError(
            f"p_anchor and p_neighbour must both be N×K, got {tuple(p_anchor.shape)} and {tuple(p_neighbour.shape)}"
        )
    dtype = torch.promote_types(p_anchor.dtype, torch.float32)
    similarity = (p_anchor.to(dtype) * p_neighbour.to(dtype)).sum(dim=1)
    return -similarity.clamp_min(torch.finfo(dtype).tiny).log().mean()
