"""BYOL's regression loss between the online prediction and the target projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Normalised MSE ``mean_i ‖q̄_i − z̄'_i‖² = mean_i (2 − 2·cos(q_i, z'_i))`` (Grill et al. 2020, Eq. 2).

    ``prediction`` is the online network's q_θ(z_θ) and ``target`` the target network's z'_ξ, both N×D and
    L2-normalised here. The target gets no gradient (stop-gradient, Eq. 2 is minimised w.r.t. θ only). BYOL's
    loss is symmetrised by adding the term with the two views swapped, ``L^BYOL = L + L̃`` (§3.1); that is the
    method's job.
    """
    if prediction.shape != target.shape or prediction.dim() != 2:
        raise ValueError(
            f"prediction and target must both be N×D, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    cosine = F.cosine_similarity(prediction.to(dtype), target.detach().to(dtype), dim=1)
    return cosine.mean().mul(-2.0).add(2.0)  # 2 − 2·mean cos, in two tensor ops
