"""SwAV's swapped prediction loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """Swapped prediction (Caron et al. 2020, Eq. 1–2, and multi-crop, Sec. 3.2) over V views.

    ``ℓ(z_s, q_t) = −mean_i Σ_k q_t,ik · log softmax(z_sᵀc / τ)_ik``: the code of view t is predicted from the
    prototype scores of view s. ``scores[v]`` are view v's B×K prototype scores; ``codes[t]`` are the codes
    (from :func:`~deepclust.losses.sinkhorn.sinkhorn`, treated as constants) of the first A ≤ V views, the
    assignment views (SwAV's ``crops_for_assign``; with multi-crop, the large crops). The loss is
    ``(1/A) Σ_{t<A} (1/(V−1)) Σ_{s≠t} ℓ(z_s, q_t)``, as in ``main_swav.py``. With two views and two codes
    this is ``[ℓ(z_1, q_2) + ℓ(z_2, q_1)] / 2``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(
            f"swav_loss needs the scores of ≥ 2 views and the codes of 1 to all of them, got {len(scores)} "
            f"and {len(codes)}"
        )
    # each view's log-probabilities are reused against every assignment view's codes
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    log_probs = [F.log_softmax(s.to(dtype) / temperature, dim=1) for s in scores]
    terms = [
        (codes[t].detach() * log_probs[s]).sum()
        for t in range(len(codes))
        for s in range(len(scores))
        if s != t
    ]
    return -torch.stack(terms).sum() / (len(codes) * (len(scores) - 1) * scores[0].shape[0])
