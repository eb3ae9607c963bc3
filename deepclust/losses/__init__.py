"""Losses: pure functions, one concept per module; none of them knows the trainer."""

from deepclust.losses.byol import byol_loss
from deepclust.losses.c2bin import alignment_loss, bca_contrast, bca_entropy
from deepclust.losses.cluster_contrast import cc_entropy_term, cluster_contrastive_loss, cluster_entropy
from deepclust.losses.consensus import (
    TRANSFORMS,
    consensus_loss,
    pairwise_nmi,
    random_transforms,
    transformed_scores,
)
from deepclust.losses.dec import (
    anchor_loss,
    cluster_frequencies,
    dec_target,
    jensen_shannon,
    kl_divergence,
    student_t_assignment,
)
from deepclust.losses.nearest_neighbour import nearest_neighbour_contrast
from deepclust.losses.nt_xent import NTXentLoss, nt_xent
from deepclust.losses.prototype_scattering import cluster_prototypes, prototype_scattering_loss
from deepclust.losses.scan import neighbour_consistency
from deepclust.losses.self_label import confident_self_label_loss, top_per_cluster_self_label_loss
from deepclust.losses.sinkhorn import sinkhorn
from deepclust.losses.swav import swav_loss

__all__ = [
    "TRANSFORMS",
    "NTXentLoss",
    "alignment_loss",
    "anchor_loss",
    "bca_contrast",
    "bca_entropy",
    "byol_loss",
    "cc_entropy_term",
    "cluster_contrastive_loss",
    "cluster_entropy",
    "cluster_frequencies",
    "cluster_prototypes",
    "confident_self_label_loss",
    "consensus_loss",
    "dec_target",
    "jensen_shannon",
    "kl_divergence",
    "nearest_neighbour_contrast",
    "neighbour_consistency",
    "nt_xent",
    "pairwise_nmi",
    "prototype_scattering_loss",
    "random_transforms",
    "sinkhorn",
    "student_t_assignment",
    "swav_loss",
    "top_per_cluster_self_label_loss",
    "transformed_scores",
]
