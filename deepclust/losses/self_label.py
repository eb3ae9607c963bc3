"""SCAN's self-labelling loss: cross-entropy on confident pseudo-labels, weighted against class imbalance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def confident_self_label_loss(
    p_weak: Tensor, p_strong: Tensor, threshold: float = 0.99, balanced: bool = True
) -> tuple[Tensor, Tensor]:
    """``(loss, share of confident samples)`` of SCAN's self-labelling step (Van Gansbeke et al. 2020, Sec. 2.3).

    ``p_weak`` are N×K assignments of weakly augmented images (no gradient is taken through them): a sample whose
    largest probability exceeds ``threshold`` gets the pseudo-label ``y_i = argmax_k p_weak[i, k]``. The loss is
    the cross-entropy ``−log p_strong[i, y_i]`` of the strongly augmented view, averaged over the confident
    samples. With ``balanced`` every pseudo-class ``c`` is weighted by ``1 / f_c``, the inverse of its share
    among the confident samples of the batch, and the average is weighted (``Σ w_i ℓ_i / Σ w_i``), as SCAN's
    code does; without it, clusters that are confident early take over and others empty. With no confident
    sample the loss is a zero that keeps the graph.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if p_weak.shape != p_strong.shape or p_weak.dim() != 2:
        raise ValueError(
            f"p_weak and p_strong must both be N×K, got {tuple(p_weak.shape)} and {tuple(p_strong.shape)}"
        )
    dtype = torch.promote_types(p_strong.dtype, torch.float32)
    confidence, target = p_weak.detach().to(dtype).max(dim=1)
    mask = confidence > threshold
    share = mask.to(dtype).mean()
    log_p = p_strong.to(dtype).clamp_min(torch.finfo(dtype).tiny).log()
    if not mask.any():
        return (log_p * 0.0).sum(), share
    target, log_p = target[mask], log_p[mask]
    weight = None
    if balanced:
        counts = torch.bincount(target, minlength=p_weak.shape[1]).to(dtype)
        weight = torch.where(counts > 0, len(target) / counts.clamp_min(1.0), torch.zeros_like(counts))
    return F.nll_loss(log_p, target, weight=weight), share


def top_per_cluster_self_label_loss(
    p_weak: Tensor, p_strong: Tensor, fraction: float = 0.5, threshold: float = 0.0
) -> tuple[Tensor, Tensor]:
    """``(loss, share of selected samples)``: cross-entropy on a class-balanced selection of pseudo-labels.

    The selection of Twin Contrastive Learning's boosting stage (Li et al., IJCV 2022, Sec. 3.3) and of SPICE
    (Niu et al., TIP 2022), taken within the batch: every sample is assigned to ``y_i = argmax_k p_weak[i, k]``,
    and of the samples assigned to cluster ``k`` only the ``m = ⌈fraction · N / K⌉`` most confident ones, and
    only those above ``threshold``, are kept. The loss is ``−log p_strong[i, y_i]`` averaged over the kept
    samples. No cluster contributes more than ``m`` samples, so a cluster that is confident early cannot
    outweigh the others, which a single global threshold allows. With no sample kept the loss is a zero that
    keeps the graph.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if p_weak.shape != p_strong.shape or p_weak.dim() != 2:
        raise ValueError(
            f"p_weak and p_strong must both be N×K, got {tuple(p_weak.shape)} and {tuple(p_strong.shape)}"
        )
    n, k = p_weak.shape
    dtype = torch.promote_types(p_strong.dtype, torch.float32)
    confidence, target = p_weak.detach().to(dtype).max(dim=1)
    per_cluster = math.ceil(fraction * n / k)
    # Rank of each sample among those of its cluster, by decreasing confidence: sort by confidence, then
    # (stably) by cluster, and count the position within each cluster's run.
    order = torch.argsort(confidence, descending=True)
    order = order[torch.sort(target[order], stable=True).indices]
    counts = torch.bincount(target, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(target)
    rank[order] = torch.arange(n, device=target.device) - starts[target[order]]
    mask = (rank < per_cluster) & (confidence > threshold)
    share = mask.to(dtype).mean()
    log_p = p_strong.to(dtype).clamp_min(torch.finfo(dtype).tiny).log()
    if not mask.any():
        return (log_p * 0.0).sum(), share
    return F.nll_loss(log_p[mask], target[mask]), share
