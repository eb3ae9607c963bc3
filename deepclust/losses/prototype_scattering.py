"""ProPos's prototype scattering loss: contrast the cluster prototypes of a batch between two views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cluster_prototypes(embeddings: Tensor, labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """``(K×D prototypes, K present)``: the L2-normalised mean of each cluster's rows of ``embeddings`` (N×D)
    under the pseudo-labels ``labels`` (N, in ``[0, K)``), and which clusters have a row in the batch (an absent
    cluster's prototype is zero)."""
    members = F.one_hot(labels, num_clusters).T.to(embeddings.dtype)  # K×N
    counts = members.sum(dim=1)
    means = members @ embeddings / counts.clamp_min(1.0).unsqueeze(1)
    return F.normalize(means, dim=1), counts > 0


def prototype_scattering_loss(
    online: Tensor, target: Tensor, labels: Tensor, num_clusters: int, temperature: float = 0.5
) -> Tensor:
    """ProPos's prototype scattering loss (Huang et al., TPAMI 2022), as the authors' code computes it.

    With ``μ_k`` the prototype of cluster k among the L2-normalised ``online`` embeddings (N×D) and ``μ'_k``
    the same among the ``target`` embeddings (:func:`cluster_prototypes`, pseudo-labels ``labels`` from
    k-means), over the set ``P`` of clusters present in the batch::

        L = 1/|P| Σ_{k∈P} −log  exp(μ_k·μ'_k/τ) / ( exp(μ_k·μ'_k/τ) + Σ_{j∈P, j≠k} exp(μ_k·μ_j/τ) )

    The positive pairs a cluster's online and target prototypes; the negatives are the other clusters' online
    prototypes, so minimising it scatters the prototypes apart while aligning the two views. Clusters absent
    from the batch take no part (the code masks them with a logit of −10; here they are left out exactly).
    The target gets no gradient. A batch whose rows all share one cluster gives 0. It is computed in float32
    with autocast off: bf16 similarities are too coarse for the logits (as in SwAV's loss).
    """
    if online.shape != target.shape or online.dim() != 2:
        raise ValueError(
            f"online and target must both be N×D, got {tuple(online.shape)} and {tuple(target.shape)}"
        )
    if labels.shape != (online.shape[0],) or len(labels) == 0:
        raise ValueError(
            f"labels must have one entry per row ({online.shape[0]} ≥ 1), got {tuple(labels.shape)}"
        )
    dtype = torch.promote_types(online.dtype, torch.float32)
    with torch.autocast(online.device.type, enabled=False):
        online_protos, present = cluster_prototypes(
            F.normalize(online.to(dtype), dim=1), labels, num_clusters
        )
        target_protos, _ = cluster_prototypes(
            F.normalize(target.detach().to(dtype), dim=1), labels, num_clusters
        )
        online_protos, target_protos = online_protos[present], target_protos[present]
        logits = online_protos @ online_protos.T / temperature
        positives = (online_protos * target_protos).sum(dim=1) / temperature
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = torch.where(eye, positives.unsqueeze(1), logits)
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
