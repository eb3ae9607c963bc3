"""Contrastive Clustering (CC, Li et al., AAAI 2021): instance- and cluster-level contrast on two views.

Instance head ``g_I``: Linear → ReLU → Linear(128), L2-normalised, NT-Xent at ``τ_I``. Cluster head
``g_C``: Linear → ReLU → Linear(K) → softmax; the columns of the two views' N×K assignment matrices are
contrasted at ``τ_C``, plus an entropy term on the cluster marginals that prevents collapse into one cluster.
Neither head has BatchNorm, and each view goes through the network separately, as in the authors' code. The
cluster read-out is the argmax of ``g_C``. Two named options, neither in the CC paper: with
``params.num_heads > 1`` several cluster heads are trained side by side on the same backbone, their mean cluster
loss is minimised, and the head with the lowest running cluster loss is read out (as SCAN's code and IIC's
sub-heads do; :class:`~deepclust.models.MultiHead`). With ``params.neighbour_queue > 0`` the instance loss takes
NNCLR's nearest neighbours from a support set of recent embeddings as its anchors
(:class:`~deepclust.methods.common.NeighbourPositives`). See docs/methods/cc.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from deepclust.losses import cc_entropy_term, cluster_contrastive_loss, nt_xent
from deepclust.losses.cluster_contrast import ENTROPY_VARIANTS
from deepclust.methods.base import Batch
from deepclust.methods.common import NEIGHBOUR_SPACES, BackboneMethod, NeighbourPositives
from deepclust.models import ClusterHead, MultiHead, mlp
from deepclust.models.heads import at_head
from deepclust.models.support_set import PIXEL_KEY_SIDE
from deepclust.validation import check_choice, check_ranges


@dataclass
class CCConfig:
    """CC hyper-parameters (``params.*``).

    Attributes:
        instance_dim: output size of the instance head (code: 128).
        hidden_dim: hidden width of both heads; ``None`` = the backbone's feature size (code: 512, ResNet34).
        instance_temperature: ``τ_I`` of the instance-level NT-Xent (code: 0.5).
        cluster_temperature: ``τ_C`` of the cluster-level contrast (code: 1.0).
        entropy_weight: weight of the entropy term (code: 1; raise it against collapse, lower it on
            imbalanced data, per the maintainer's advice in CC issues #50 and #25).
        entropy_variant: "code" (each view's marginal normalised separately, ``+ log K`` per view; what the
            authors' code does and what they acknowledge as correct, CC issue #4) or "paper" (H(Y) as
            printed: both views' cluster masses normalised by their joint total, no ``log K``).
        num_heads: cluster heads ``g_C`` trained side by side (paper and code: one). The objective takes the
            mean of their cluster losses, so one head or several weigh the same against ``L_ins``.
        head_loss_momentum: momentum of each head's running cluster loss (contrast plus weighted entropy
            term), the exponential average over training steps whose lowest value picks the read-out head.
        neighbour_queue: size of a support set of the latest first-view instance embeddings (0: none, CC's
            NT-Xent). Once it is full, the instance loss is NNCLR's (Dwibedi et al. 2021): each view's nearest
            neighbour in the support set is the anchor, the other view of the same sample its positive and the
            other samples' views its negatives, at ``τ_I``.
        neighbour_space: what the nearest neighbour is searched by: "embedding" (each view's instance
            embedding, as NNCLR does) or "pixels" (the un-augmented image's centred pixels; the same neighbour
            for both views). Pixel neighbours suit centred, aligned images on a plain background such as
            Fashion-MNIST, not natural images.
        neighbour_key_side: with pixel neighbours, images with a larger side are average-pooled to this side
            before their pixels are compared (a smaller key is quicker to search).
    """

    instance_dim: int = 128
    hidden_dim: int | None = None
    instance_temperature: float = 0.5
    cluster_temperature: float = 1.0
    entropy_weight: float = 1.0
    entropy_variant: str = "code"
    num_heads: int = 1
    head_loss_momentum: float = 0.99
    neighbour_queue: int = 0
    neighbour_space: str = "embedding"
    neighbour_key_side: int = PIXEL_KEY_SIDE


class ContrastiveClustering(BackboneMethod):
    """CC: backbone, instance head (NT-Xent) and cluster head (column contrast + entropy)."""

    Config: ClassVar[type | None] = CCConfig
    # The authors' settings (config/config.yaml): Adam at 3e-4 without weight decay or schedule; the cc
    # augmentation preset has no Normalize, as their transform.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "optim": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0, "schedule": "constant"},
        "augment": {"pipeline": "cc"},
    }
    primary_readout: ClassVar[str] = "head"
    uses_extra_split: ClassVar[bool] = True
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.instance_dim=8", "params.hidden_dim=16")

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.entropy_variant", p.entropy_variant, ENTROPY_VARIANTS)
        check_choice("params.neighbour_space", p.neighbour_space, NEIGHBOUR_SPACES)
        check_ranges(
            p,
            "params.",
            positive=("instance_temperature", "cluster_temperature"),
            at_least_one=("instance_dim", "hidden_dim", "neighbour_key_side"),
            non_negative=("entropy_weight", "neighbour_queue"),
        )
        hidden = p.hidden_dim or self.feature_dim
        self.instance_head = mlp(self.feature_dim, hidden, p.instance_dim, num_layers=2, batch_norm=False)
        # g_C, params.num_heads of them (paper: one); the one with the lowest running cluster loss is read out
        self.cluster_heads = MultiHead(
            lambda: ClusterHead(self.feature_dim, num_clusters, hidden_dim=hidden),
            p.num_heads,
            p.head_loss_momentum,
        )
        # option: NNCLR's support-set neighbours as the instance loss's anchors
        self.neighbours: NeighbourPositives | None = None
        if p.neighbour_queue > 0:
            self.neighbours = NeighbourPositives(
                p.neighbour_queue, p.instance_dim, p.neighbour_space, p.neighbour_key_side, image_shape
            )

    def cluster_probs(self, features: Tensor) -> Tensor:
        """Soft assignments ``softmax(g_C(h))`` of the read-out head, N×K (float32)."""
        return self.cluster_heads.readout(features)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``L = L_ins + L_clu`` (Li et al. 2021, Eq. 3, 6, 7), the entropy term weighted and per variant.

        On batches of ``data.extra_split`` the loss is ``L_ins`` alone and the cluster head is not run: how the
        authors' ``train_STL10.py`` uses STL-10's 100,000 unlabelled images (``data.extra_split=unlabeled``).
        """
        images = batch.images
        view_a, view_b = self.views(images)[:2]
        h_a, h_b = self.backbone(view_a), self.backbone(view_b)
        z_a = F.normalize(self.instance_head(h_a), dim=1)
        z_b = F.normalize(self.instance_head(h_b), dim=1)
        p = self.params
        gather = self.gather
        # L_ins: NT-Xent (Eq. 3), or with the neighbours option NNCLR's loss once its support set is full
        if self.neighbours is None:
            instance = nt_xent(z_a, z_b, p.instance_temperature, gather=gather)
        else:
            instance = self.neighbours(images, z_a, z_b, p.instance_temperature, gather)
        if batch.is_extra:
            return {"loss": instance, "instance": instance}
        # Several heads: H×N×K assignments of all of them at once, and each loss gives H values. One head: N×K.
        c_a, c_b = self.cluster_heads(h_a, h_b)
        cluster = cluster_contrastive_loss(c_a, c_b, p.cluster_temperature, gather=gather).reshape(-1)
        # The marginals of the global batch (gathering only the K cluster masses).
        entropy = cc_entropy_term(c_a, c_b, variant=p.entropy_variant, gather=gather).reshape(-1)
        entropy = p.entropy_weight * entropy
        best_cluster, best_entropy = cluster[0], entropy[0]
        if p.num_heads > 1:
            best = self.cluster_heads.update(cluster + entropy)
            best_cluster, best_entropy = at_head(cluster, best), at_head(entropy, best)
        return {
            # the same sum as ``instance + (cluster + entropy).mean()``, in the one-head order of additions
            "loss": instance + cluster.mean() + entropy.mean(),
            "instance": instance,
            "cluster": best_cluster,
            "entropy": best_entropy,
        }
