"""The losses of SIC (Sundareswaran et al., "Cluster Analysis with Deep Embeddings and Contrastive Learning"):
DEC's Student-t soft assignment and target distribution (Xie et al., ICML 2016) and the KL divergences built on
them. (The instance loss with the denominator the SIC paper prints is ``nt_xent(..., include_self=True)``.)

The paper numbers no equation; the docstrings count its display equations in order of appearance:
(1) the instance loss ``l^I_i``, (2) the cosine ``ψ``, (3) ``L_Instance``, (4) the Student-t ``q_ij``,
(5) the target ``p_ij``, (6) ``l^C_i = KL[p_i‖q_i]``, (7) ``L_Cluster``, (8) ``l^A_i``, (9) ``L_Anchor``,
(10) ``L_Total``.

Every function computes in float32 (float64 stays float64) whatever precision its inputs come in, and every
logarithm is of a value clamped to at least :data:`LOG_EPS` (the authors' code adds ``1e-8``), so a zero
probability gives a large finite term, never NaN or infinity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepclust.distributed import all_reduce_sum

#: the smallest value a probability is taken to have inside a logarithm (the code's ``1e-8``)
LOG_EPS = 1e-8


def _float(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it is float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_probs(name: str, q: Tensor) -> None:
    if q.dim() != 2:
        raise ValueError(f"{name} must be N×K soft assignments, got shape {tuple(q.shape)}")


def student_t_assignment(features: Tensor, centres: Tensor, alpha: float = 1.0) -> Tensor:
    """DEC's soft assignment of N×D ``features`` to K×D ``centres`` (SIC Eq. 4; Xie et al. 2016, Eq. 1)::

        q_ij = (1 + ‖h_i − μ_j‖²/α)^(−(α+1)/2) / Σ_j' (1 + ‖h_i − μ_j'‖²/α)^(−(α+1)/2)

    ``alpha`` is the Student-t's degrees of freedom (SIC and DEC: 1). Computed in float32 even under autocast,
    as a softmax of the kernel's logarithm (no kernel underflows to 0/0), the squared distances clamped at 0
    against rounding. Returns N×K rows summing to 1, differentiable in both the features and the centres.
    """
    if alpha <= 0:
        raise ValueError(f"the Student-t degrees of freedom must be positive, got {alpha}")
    if features.dim() != 2 or centres.dim() != 2 or features.shape[1] != centres.shape[1]:
        raise ValueError(
            f"features must be N×D and centres K×D, got {tuple(features.shape)} and {tuple(centres.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(features.dtype, centres.dtype), torch.float32)
    # outside autocast: in bf16 the expansion below would lose the distances to cancellation
    with torch.autocast(features.device.type, enabled=False):
        h, mu = features.to(dtype), centres.to(dtype)
        # ‖h − μ‖² = ‖h‖² − 2 h·μ + ‖μ‖²: an N×K matrix without the N×K×D differences
        squared = (h.square().sum(1, keepdim=True) - 2.0 * h @ mu.T + mu.square().sum(1)).clamp_min(0.0)
        log_kernel = -(alpha + 1.0) / 2.0 * torch.log1p(squared / alpha)
        return torch.softmax(log_kernel, dim=1)


def cluster_frequencies(q: Tensor, distributed: bool = False) -> Tensor:
    """The soft cluster frequencies ``f_j = Σ_i q_ij`` of SIC Eq. 5 over the batch, detached (K values).

    With ``distributed=True`` (under torch.distributed) they are summed over every process's batch: the
    frequencies of the global batch, which is what one process would compute on it. Without a process group
    ``distributed`` changes nothing.
    """
    _check_probs("q", q)
    frequencies = _float(q.detach()).sum(dim=0)
    return all_reduce_sum(frequencies) if distributed else frequencies


def dec_target(q: Tensor, distributed: bool = False) -> Tensor:
    """DEC's auxiliary target distribution of N×K soft assignments (SIC Eq. 5; Xie et al. 2016, Eq. 3)::

        p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j'),    f_j = Σ_i q_ij

    computed per batch, as the authors' code does (classic DEC recomputes it over the whole dataset
    periodically). Squaring sharpens each row; dividing by the frequency keeps large clusters from taking over.
    The target is detached: it is what ``q`` is pulled toward, not something to train. With ``distributed``
    the frequencies are the global batch's (:func:`cluster_frequencies`), so the target of each sample is the
    one a single process would compute on the global batch. Computed in log space: ``log p = softmax-normalised
    2 log q − log f``, with ``f`` clamped away from 0.
    """
    frequencies = cluster_frequencies(q, distributed)
    log_q = torch.log(_float(q.detach()).clamp_min(LOG_EPS))
    log_f = torch.log(frequencies.clamp_min(LOG_EPS))
    return torch.softmax(2.0 * log_q - log_f, dim=1)


def kl_divergence(target: Tensor, q: Tensor) -> Tensor:
    """Batch mean of ``KL[target_i ‖ q_i] = Σ_j target_ij (log target_ij − log q_ij)`` (SIC Eq. 6–7 with
    ``target = p``; also each term of Eq. 8).

    The target is used as given: detach it first where it must not be trained (:func:`dec_target` already is).
    A zero target entry contributes 0, as ``KLDivLoss`` counts it; logarithms are clamped at :data:`LOG_EPS`.
    """
    _check_probs("target", target)
    if target.shape != q.shape:
        raise ValueError(
            f"target and q must have the same shape, got {tuple(target.shape)} and {tuple(q.shape)}"
        )
    t, p = _float(target), _float(q)
    log_ratio = torch.log(t.clamp_min(LOG_EPS)) - torch.log(p.clamp_min(LOG_EPS))
    return (t * log_ratio).sum(dim=1).mean()


def anchor_loss(q0: Tensor, q1: Tensor, q2: Tensor, detach_anchor: bool = True) -> Tensor:
    """SIC's anchor loss (Eq. 8–9): ``mean_i KL[q0_i ‖ q1_i] + KL[q0_i ‖ q2_i]``, the raw view's assignments
    ``q0`` the anchor of the two augmented views' ``q1`` and ``q2``.

    ``detach_anchor=True`` (the authors' code: their ``KLDiv`` detaches its target) pulls the augmented views'
    assignments toward the raw view's and leaves ``q0`` to the cluster loss; ``False`` lets the gradient reach
    ``q0`` as well, as the paper's formula reads.
    """
    anchor = q0.detach() if detach_anchor else q0
    return kl_divergence(anchor, q1) + kl_divergence(anchor, q2)


def jensen_shannon(q1: Tensor, q2: Tensor) -> Tensor:
    """Batch mean of ``JSD[q1_i ‖ q2_i] = ½ KL[q1_i ‖ m_i] + ½ KL[q2_i ‖ m_i]``, ``m = (q1 + q2)/2``: the
    first anchor function of SIC's Table 5 ablation, symmetric and differentiable in both arguments."""
    mixture = 0.5 * (_float(q1) + _float(q2))
    return 0.5 * (kl_divergence(q1, mixture) + kl_divergence(q2, mixture))
