"""SwAV's swapped prediction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """``L = mean over ordered pairs s≠t of ℓ(z_s, q_t)``, ``ℓ(z, q) = −mean_i Σ_k q_ik log softmax(zᵀc/τ)_ik``.

    Caron et al. 2020, Eq. 1–2: the code of one view is predicted from the prototype scores of another.
    ``scores[v]`` are B×K prototype scores of view v; ``codes[v]`` the (Sinkhorn) codes of view v.
    """
    if len(scores) != len(codes) or len(scores) < 2:
        raise ValueError("swav_loss needs the scores and codes of at least two views")
    log_probs = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    terms = [
        -(codes[t] * log_probs[s]).sum(dim=1).mean()
        for t in range(len(codes))
        for s in range(len(scores))
        if s != t
    ]
    return torch.stack(terms).mean()
