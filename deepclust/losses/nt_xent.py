"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (also CC's instance-level loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.distributed import all_gather_with_grad, rank


def two_view_contrast(
    anchors: Tensor, keys: Tensor, offset: int, temperature: float, include_self: bool = False
) -> Tensor:
    """Mean cross-entropy of 2n unit anchors ``[view a; view b]`` against unit ``keys`` (NT-Xent's core).

    ``keys`` holds the anchors themselves at rows ``offset … offset + 2n − 1`` (the whole key set when it is
    just the anchors, this rank's block when the keys were gathered). Anchor i's own key is masked out and its
    positive is the other view of the same item, key ``offset + (i + n) mod 2n``; every other key is a negative.
    With ``include_self`` the anchor's own key stays in the denominator (the SIC paper's printed Eq. 1).
    No mask depends on a fixed batch size, so any n works, including a smaller last batch.

    Leading dimensions (``…×2n×D`` anchors and ``…×M×D`` keys) are independent problems, one loss each.
    """
    views = anchors.shape[-2]
    # scaling the 2n×D anchors is cheaper than scaling the 2n×2M logits
    logits = (anchors / temperature) @ keys.mT
    # anchor i sits at key offset + i: that diagonal of the logits is the self-similarity (in place, no mask)
    if not include_self:
        logits.diagonal(offset, dim1=-2, dim2=-1).fill_(float("-inf"))
    index = torch.arange(views, device=anchors.device)
    positive = offset + (index + views // 2) % views
    if logits.dim() == 2:
        return F.cross_entropy(logits, positive)
    problems = logits.shape[:-2]
    rows = F.cross_entropy(logits.flatten(0, -2), positive.repeat(problems.numel()), reduction="none")
    return rows.view(*problems, views).mean(dim=-1)


def nt_xent(
    z_a: Tensor, z_b: Tensor, temperature: float = 0.5, gather: bool = False, include_self: bool = False
) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1; CC's instance loss, Li et al. 2021, Eq. 2–3).

    For each of the 2N anchors i (both views of every sample) with positive j(i), the other view of the same
    sample::

        ℓ_i = −log  exp(s_{i,j(i)}/τ) / Σ_{k≠i} exp(s_{i,k}/τ),    s = cosine similarity,    L = mean_i ℓ_i

    which is CC's ``CrossEntropy(reduction="sum") / 2N``. ``include_self=True`` sums the denominator over every
    k, the anchor's ``exp(1/τ)`` included, as the SIC paper prints its Eq. 1 (its authors' code leaves it out).
    ``z_a`` and ``z_b`` are N×D with row n of both the same sample; they are L2-normalised here, so raw projector
    outputs can be passed. Half-precision inputs are computed in float32, float64 stays float64.

    With ``gather=True`` (under torch.distributed) the keys are the 2·N·W views of the whole distributed batch,
    gathered with gradients, and this rank's anchors are its own 2N views: the mean of the ranks' losses is the
    single-process loss of the global batch, and with DDP's gradient averaging so are the gradients. Without a
    process group ``gather`` changes nothing.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"z_a and z_b must both be N×D, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    # half precision is lifted to float32 for the normalisation and soft-max; float64 stays float64
    dtype = torch.promote_types(z_a.dtype, torch.float32)
    anchors = F.normalize(torch.cat([z_a, z_b]).to(dtype), dim=1)
    if gather:
        # one gather of [a; b]: rank r's block [a_r; b_r] starts at row 2N·r of the keys
        keys = all_gather_with_grad(anchors)
        return two_view_contrast(anchors, keys, rank() * anchors.shape[0], temperature, include_self)
    return two_view_contrast(anchors, anchors, 0, temperature, include_self)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`, holding the temperature and the gather flag."""

    def __init__(self, temperature: float = 0.5, gather: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather = gather

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """NT-Xent of the two views' projections (see :func:`nt_xent`)."""
        return nt_xent(z_a, z_b, self.temperature, self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}"
