"""SwAV's swapped prediction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """Swapped prediction (Caron et al. 2020, Eq. 1–2), averaged over the ordered pairs of views s ≠ t.

    ``ℓ(z_s, q_t) = −mean_i Σ_k q_t,ik · log softmax(z_sᵀc / τ)_ik``: the code of view t is predicted from the
    prototype scores of view s. ``scores[v]`` are view v's B×K prototype scores and ``codes[v]`` its codes
    (from :func:`~deepclust.losses.sinkhorn.sinkhorn`, treated as constants). With two views this is
    ``[ℓ(z_1, q_2) + ℓ(z_2, q_1)] / 2``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(scores) != len(codes) or len(scores) < 2:
        raise ValueError(
            f"swav_loss needs scores and codes for the same ≥ 2 views, got {len(scores)} and {len(codes)}"
        )
    # each view's log-probabilities are reused against every other view's codes
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    log_probs = [F.log_softmax(s.to(dtype) / temperature, dim=1) for s in scores]
    terms = [
        (codes[t].detach() * log_probs[s]).sum()
        for t in range(len(codes))
        for s in range(len(scores))
        if s != t
    ]
    views = len(scores)
    return -torch.stack(terms).sum() / (views * (views - 1) * scores[0].shape[0])
