"""BYOL's regression loss between the online prediction and the target projection."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``mean_i (2 − 2·⟨q_i/‖q_i‖, z'_i/‖z'_i‖⟩)`` (Grill et al. 2020, Eq. 2); no gradient reaches ``target``.

    BYOL symmetrises by adding the loss with the views swapped (Eq. 3); that is the method's job.
    """
    p = F.normalize(prediction.float(), dim=1)
    t = F.normalize(target.detach().float(), dim=1)
    return (2.0 - 2.0 * (p * t).sum(dim=1)).mean()
