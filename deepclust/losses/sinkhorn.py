"""Sinkhorn-Knopp equipartition of a batch over prototypes (SwAV's online codes; ConCURL's targets)."""

from __future__ import annotations

import torch
from torch import Tensor

from deepclust.distributed import all_reduce_max, all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    distributed: bool = False,
    max_subtract: bool = True,
) -> Tensor:
    """Codes Q* = Diag(u) exp(Cᵀz/ε) Diag(v) (Caron et al. 2020, Eq. 3 and appendix A.1).

    ``scores`` is B×K (prototype scores of this rank's samples). Computed in float32 whatever the input dtype
    (exp(1/0.05) overflows fp16). Rows of Q (prototypes) are scaled to 1/K and columns (samples) to 1/B, B the
    global batch; with ``distributed=True`` the prototype sums and B are reduced over ranks. Returns B_local×K
    codes whose rows sum to 1.

    ``max_subtract`` removes the (global) maximum before the exponential, which leaves Q unchanged after
    normalisation but avoids overflow; ConCURL's copy of the old SwAV code does not do it (set False to match).
    """
    logits = scores.detach().float() / epsilon
    if max_subtract:
        peak = logits.max()
        logits = logits - (all_reduce_max(peak.clone()) if distributed else peak)
    q = torch.exp(logits).T  # K×B
    k = q.shape[0]
    batch = q.shape[1] * (world_size() if distributed else 1)
    total = q.sum()
    q /= all_reduce_sum(total) if distributed else total
    for _ in range(iterations):
        row = q.sum(dim=1, keepdim=True)
        q /= (all_reduce_sum(row) if distributed else row) * k
        q /= q.sum(dim=0, keepdim=True) * batch
    return (q * batch).T
