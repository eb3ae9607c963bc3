"""Sinkhorn-Knopp equipartition of a batch over prototypes (SwAV's online codes; ConCURL's targets)."""

from __future__ import annotations

import torch
from torch import Tensor

from deepclust.distributed import all_reduce_max, all_reduce_sum, is_distributed, world_size


@torch.no_grad()
def sinkhorn(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    distributed: bool = False,
    max_subtract: bool = True,
) -> Tensor:
    """SwAV's codes ``Q* = Diag(u) exp(Cᵀz/ε) Diag(v)`` (Caron et al. 2020, Eq. 3 and appendix A.1).

    ``scores`` is B×K: this rank's samples against the K prototypes (cosine similarities in SwAV). Q is rescaled
    alternately so that every prototype (row of SwAV's K×B matrix) gets 1/K of the mass and every sample 1/B, B
    the global batch, for ``iterations`` rounds (SwAV: 3), and returned as B_local×K codes whose rows sum to 1
    (SwAV's ``B·Qᵀ``). With ``distributed=True`` under torch.distributed, the prototype sums are all-reduced, so
    each rank's codes are its rows of the single-process codes of the global batch. The computation is float32
    whatever the input dtype (``exp(1/0.05) ≈ 4.9e8`` already overflows fp16), outside autocast; no gradient.

    It runs in the scaling form of Eq. 3, in the B×K layout ``Q = Diag(v) E Diag(u)``: E is written once, each
    rescaling is one matrix-vector product (``u = 1/(K·Eᵀv)`` for the prototypes, ``v = 1/(B·Eu)`` for the
    samples), and Q is formed at the end; the codes are SwAV's up to float rounding. B must be the global batch:
    with targets 1/K and 1/B both steps give a total mass of 1, so u and v converge instead of drifting by a
    constant factor every round.

    ``max_subtract=True`` (default) exponentiates max-subtracted scores ``(s_jk − m_k)/ε − n_j``, with m_k the
    prototype's maximum over the (global) batch and n_j the sample's remaining maximum. Every prototype (over
    the global batch) and every sample of E then holds a 1, so nothing overflows and no prototype or sample
    underflows to all zeros (0/0 = NaN codes), whatever |s|/ε. Both shifts are exact: the first prototype
    rescaling undoes m_k, and starting from ``v_j ∝ exp(n_j)`` puts n_j back; where exp(n_j) underflows, the
    terms lost from a prototype sum are below 1e-38 of that sum, which is ≥ 1. ``max_subtract=False`` is the
    unguarded ``exp(s/ε)`` of the SwAV code ConCURL copied (without its optional
    ``improve_numerical_stability``): the same codes where it is finite, inf/NaN once s/ε exceeds about 88.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    reduce = distributed and is_distributed()
    device = scores.device.type
    if torch.is_autocast_enabled(device):
        # the matrix-vector products must stay float32 even when the caller runs under autocast
        with torch.autocast(device, enabled=False):
            return _scaled_codes(scores.detach().float(), epsilon, iterations, reduce, max_subtract)
    return _scaled_codes(scores.detach().float(), epsilon, iterations, reduce, max_subtract)


def _scaled_codes(
    scores: Tensor, epsilon: float, iterations: int, reduce: bool, max_subtract: bool
) -> Tensor:
    """The body of :func:`sinkhorn` on float32 ``scores`` (B×K: e[j, k] for sample j and prototype k)."""
    # the prototype mass K·Eᵀv written for w = B·v, the samples' final scale (rows of Diag(w) E Diag(u) sum to 1)
    mass_scale = scores.shape[1] / (scores.shape[0] * (world_size() if reduce else 1))
    if max_subtract:
        peak = scores.amax(dim=0)
        if reduce:
            all_reduce_max(peak)
        e = torch.add(peak / -epsilon, scores, alpha=1 / epsilon)  # (s − m)/ε in one pass
        sample_peak = e.amax(dim=1, keepdim=True)
        e = e.sub_(sample_peak).exp_()
        w = sample_peak.exp_().view(-1)
    else:
        e = torch.exp(scores / epsilon)
        w = torch.ones(e.shape[0], device=e.device)
    prototypes_by_samples = e.T
    for _ in range(iterations):
        mass = torch.mv(prototypes_by_samples, w).mul_(mass_scale)
        if reduce:
            all_reduce_sum(mass)
        u = mass.reciprocal_()
        w = torch.mv(e, u).reciprocal_()
    return e.mul_(u).mul_(w.view(-1, 1))
