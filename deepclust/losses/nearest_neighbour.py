"""NNCLR's contrast: a sample's nearest neighbour in a support set stands in for the sample as the anchor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepclust.distributed import all_gather_with_grad, rank


def nearest_neighbour_contrast(
    neighbours: Tensor, positives: Tensor, temperature: float = 0.1, gather: bool = False
) -> Tensor:
    """NNCLR's loss (Dwibedi et al., ICCV 2021, Eq. 2), one direction::

        ℓ_i = −log  exp(NN(z_i)·z⁺_i / τ) / Σ_k exp(NN(z_i)·z⁺_k / τ),    L = mean_i ℓ_i

    ``neighbours`` (N×D) holds NN(z_i), the support-set neighbour of sample i's first view (a constant: the
    support set carries no gradient); ``positives`` (N×D) holds z⁺_i, sample i's second view. Both are
    L2-normalised here. The negatives of anchor i are the other samples' second views z⁺_k. NNCLR's code
    symmetrises the loss over the two views: ``(L(NN(z_a), z_b) + L(NN(z_b), z_a)) / 2``. Half-precision inputs
    are computed in float32.

    With ``gather=True`` (under torch.distributed) the keys z⁺_k are the second views of the whole distributed
    batch, gathered with gradients, and anchor i's positive sits at row ``rank·N + i``: the mean of the ranks'
    losses is the single-process loss of the global batch. Without a process group ``gather`` changes nothing.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if neighbours.shape != positives.shape or neighbours.dim() != 2:
        raise ValueError(
            f"neighbours and positives must both be N×D, got {tuple(neighbours.shape)} and {tuple(positives.shape)}"
        )
    dtype = torch.promote_types(positives.dtype, torch.float32)
    anchors = F.normalize(neighbours.detach().to(dtype), dim=1)
    keys = F.normalize(positives.to(dtype), dim=1)
    offset = 0
    if gather:
        offset = rank() * keys.shape[0]
        keys = all_gather_with_grad(keys)
    logits = (anchors / temperature) @ keys.T
    target = offset + torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, target)
