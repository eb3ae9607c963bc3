"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (also CC's instance-level loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.distributed import all_gather_with_grad, rank


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.5, gather: bool = False) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1; Li et al. 2021, Eq. 2–3) over the 2N views of a batch.

    For anchor i with positive j(i) (the other view of the same image)::

        ℓ_i = −log exp(s_{i,j(i)}/τ) / Σ_{k≠i} exp(s_{i,k}/τ),   s = cosine similarity,   L = mean_i ℓ_i

    ``z_a`` and ``z_b`` (N×D, row n of both is the same image) are L2-normalised here. With ``gather=True`` the
    negatives are the 2·N·world views of the whole distributed batch (gathered with gradients), and this
    rank's anchors are its own 2N views; the mean over ranks of these losses equals the single-process loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z_a, z_b = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
    n = z_a.shape[0]
    anchors = torch.cat([z_a, z_b])
    if gather:
        keys_a, keys_b = all_gather_with_grad(z_a), all_gather_with_grad(z_b)
        offset = rank() * n
    else:
        keys_a, keys_b, offset = z_a, z_b, 0
    total = keys_a.shape[0]
    keys = torch.cat([keys_a, keys_b])
    logits = anchors @ keys.T / temperature
    local = torch.arange(n, device=z_a.device) + offset
    # anchor row r (view a of sample r, or view b for r >= n) sits at column `own` among the keys
    own = torch.cat([local, local + total])
    positive = torch.cat([local + total, local])
    logits = logits.masked_fill(F.one_hot(own, 2 * total).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`."""

    def __init__(self, temperature: float = 0.5, gather: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather = gather

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return nt_xent(z_a, z_b, self.temperature, self.gather)
