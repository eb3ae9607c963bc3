"""C2BIN ("Learning Representations by Contrasting Clusters While Bootstrapping Instances", ICLR 2021
submission): instance bootstrapping, a contrast of batch-wise cluster assignments, and multi-scale cluster heads.

Runner ``E_θ``: encoder ``F_θ`` (the backbone), instance projector ``G_θ`` and predictor ``P_θ`` (MLPs).
Follower ``E_φ``: an EMA copy of ``G_θ ∘ F_θ`` that gets no gradient, ``φ ← γφ + (1 − γ)θ`` after every optimiser
step (Eq. 8; γ = 0.995 for clustering, 0.99 for representation learning). The two views ``x'``, ``x''`` go through
the networks separately (BatchNorm per view). The loss is ``L_align + λ_clust·L_clust`` (Eq. 7):

- ``L_align`` (Eq. 1): one minus the cosine between ``P_θ(G_θ(F_θ(x')))`` and ``G_φ(F_φ(x''))``, symmetrised
  over the views;
- ``L_clust`` (Eq. 2–6): per head k a linear cluster predictor ``P_c,k`` maps ``r = F_θ(x)`` to K logits and a
  softmax; the columns of the two views' N×K matrices (the batch-wise cluster assignments) are contrasted at τ,
  minus ``λ_ent·H(s)``, the entropy of the normalised column masses; the heads' losses are summed.

Heads: by default Table 10's clustering heads, K = {K_data, 40, 160} (K_data the run's number of clusters, the
read-out head); ``params.preset`` names the rows of Table 4 and Table 9, ``params.head_sizes`` any other set.
Read-outs: ``head``, the softmax of the first head when its K is the run's number of clusters (the primary one),
and ``kmeans`` on the runner's ``F_θ`` features. See docs/methods/c2bin.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from deepclust.distributed import all_gather_with_grad
from deepclust.errors import ConfigError
from deepclust.losses.c2bin import (
    BCA_NEGATIVES,
    BCA_SIMILARITIES,
    ENTROPY_VIEWS,
    alignment_loss,
    bca_contrast,
    bca_entropy,
)
from deepclust.methods.base import Batch, TrainingProgress
from deepclust.methods.common import BackboneMethod
from deepclust.models import mlp
from deepclust.models.ema import cosine_momentum, ema_update_, frozen_copy
from deepclust.validation import check_choice, check_ranges

#: the K of every cluster head of the ablations, no read-out head: Table 4's rows (a)–(f) and Table 9's rows
#: (a)–(i) as ``t9a``–``t9i`` (Table 9's (a) is Table 4's (f))
PRESETS: dict[str, tuple[int, ...]] = {
    "a": (),
    "b": (32,),
    "c": (128,),
    "d": (32, 32, 32),
    "e": (128, 128, 128),
    "f": (32, 64, 128),
    "t9a": (32, 64, 128),
    "t9b": (8,),
    "t9c": (16,),
    "t9d": (512,),
    "t9e": (8, 8, 8),
    "t9f": (16, 16, 16),
    "t9g": (512, 512, 512),
    "t9h": (8, 16, 32),
    "t9i": (16, 32, 64),
}
#: the heads after the read-out head without a preset: Table 10's K2 and K3
CLUSTERING_HEADS: tuple[int, ...] = (40, 160)
#: how Eq. 1 is symmetrised over the two views: the mean of the two directions, or their sum (BYOL's L + L̃)
ALIGN_VIEWS = ("mean", "sum")
#: the follower's momentum over training: γ throughout (Eq. 8), or BYOL's cosine schedule from γ to 1
MOMENTUM_SCHEDULES = ("constant", "cosine")


@dataclass
class C2BINConfig:
    """C2BIN hyper-parameters (``params.*``); the defaults are the clustering setting of Table 10.

    Attributes:
        projection_dim: ``d_a``, the output size of ``G_θ`` and ``P_θ`` (Eq. 1; "as in Chen et al. 2020a;c": 128).
        hidden_dim: hidden width of ``G_θ`` and ``P_θ`` (Tables 5 and 10: MLP(512, 512)).
        mlp_batch_norm: BatchNorm in the hidden layer of ``G_θ`` and ``P_θ`` (BYOL's MLPs, Grill et al. 2020, which
            the runner/follower design follows; the tables list only "ReLU": false).
        momentum: ``γ`` of the follower's update, Eq. 8 (Table 10: 0.995; Table 5: 0.99).
        momentum_schedule: ``constant`` (γ throughout, Eq. 8 as printed) or ``cosine`` (BYOL's schedule from γ to 1).
        align_views: how Eq. 1 is symmetrised over the views: ``mean`` of the two directions (1 − cos in
            [0, 2], as printed) or their ``sum`` (BYOL's ``L + L̃``).
        preset: a named set of cluster heads, Eq. 6: Table 4's ``a`` (alignment only), ``b`` {32}, ``c`` {128},
            ``d`` {32, 32, 32}, ``e`` {128, 128, 128}, ``f`` {32, 64, 128}, and Table 9's ``t9a``–``t9i``. A preset
            has no read-out head unless ``readout_head`` is set.
        head_sizes: the K of the heads after the read-out head, Eq. 6 (``None``: Table 10's [40, 160]); not with
            a preset.
        readout_head: put a first head with K = the run's number of clusters (``data.num_clusters``, else the
            dataset's classes) before the others, read out as ``head`` (``None``: yes without a preset, no with
            one).
        temperature: ``τ`` of the cluster-assignment contrast, Eq. 4 (Table 10: 1.0; Table 5: 0.5).
        similarity: ``s(c_i, c_j)`` in Eq. 4: ``cosine`` (the columns L2-normalised, as CC) or ``dot`` (as printed,
            without normalisation).
        negatives: the negatives of a column in Eq. 4: ``other_view`` (the other view's other columns, as
            printed) or ``both_views`` (every other column of both views, CC's).
        positive_in_denominator: whether Eq. 4's denominator holds the positive too (printed: ``1[j≠i]``, no).
        symmetric_contrast: both views' columns are anchors (the mean over 2K), not only ``c'`` as printed.
        entropy_weight: ``λ_ent`` of Eq. 5 (Tables 5 and 10: 1.0).
        entropy_views: which masses ``s`` Eq. 5 takes: ``mean`` of each view's entropy, their ``sum`` (CC's
            code), or the entropy of the two views' masses ``pooled``.
        cluster_weight: ``λ_clust`` of Eq. 7 (Table 10: 1.0; Table 5: 2.0).
    """

    projection_dim: int = 128
    hidden_dim: int = 512
    mlp_batch_norm: bool = True
    momentum: float = 0.995
    momentum_schedule: str = "constant"
    align_views: str = "mean"
    preset: str | None = None
    head_sizes: list[int] | None = None
    readout_head: bool | None = None
    temperature: float = 1.0
    similarity: str = "cosine"
    negatives: str = "other_view"
    positive_in_denominator: bool = False
    symmetric_contrast: bool = True
    entropy_weight: float = 1.0
    entropy_views: str = "mean"
    cluster_weight: float = 1.0


def resolve_head_sizes(params: C2BINConfig, num_clusters: int) -> tuple[int, ...]:
    """The K of every cluster head, in order (Eq. 6): the read-out head's (``num_clusters``) first when there is
    one, then the preset's or ``params.head_sizes`` (Table 10's [40, 160] when neither is set)."""
    if params.preset is not None:
        check_choice("params.preset", params.preset, tuple(PRESETS))
        if params.head_sizes is not None:
            raise ConfigError(
                f"params.preset={params.preset} and params.head_sizes both name the cluster heads; set one of them"
            )
        others, readout = PRESETS[params.preset], False
    else:
        others = CLUSTERING_HEADS if params.head_sizes is None else tuple(int(k) for k in params.head_sizes)
        readout = True
    if params.readout_head is not None:
        readout = bool(params.readout_head)
    sizes = ((num_clusters,) if readout else ()) + others
    for k in sizes:
        if k < 2:
            raise ConfigError(
                f"every cluster head needs at least 2 clusters; params.head_sizes gives {list(sizes)}"
            )
    return sizes


class C2BIN(BackboneMethod):
    """C2BIN: runner (backbone, projector, predictor, cluster heads), EMA follower, alignment + cluster losses."""

    Config: ClassVar[type | None] = C2BINConfig
    # Table 10: Adam, cosine annealing from 3e-4 to 0, no weight decay; SimCLR's augmentation (Section 4.1).
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "optim": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0, "schedule": "cosine", "min_lr_ratio": 0.0},
        "augment": {"pipeline": "simclr"},
    }
    #: "head" with a read-out head (the default); an instance without one reads out k-means
    primary_readout: ClassVar[str] = "head"
    tiny_settings: ClassVar[tuple[str, ...] | None] = (
        "params.projection_dim=8",
        "params.hidden_dim=16",
        "params.head_sizes=[20]",
    )

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.momentum_schedule", p.momentum_schedule, MOMENTUM_SCHEDULES)
        check_choice("params.align_views", p.align_views, ALIGN_VIEWS)
        check_choice("params.similarity", p.similarity, BCA_SIMILARITIES)
        check_choice("params.negatives", p.negatives, BCA_NEGATIVES)
        check_choice("params.entropy_views", p.entropy_views, ENTROPY_VIEWS)
        check_ranges(
            p,
            "params.",
            positive=("temperature",),
            at_least_one=("projection_dim", "hidden_dim"),
            non_negative=("entropy_weight", "cluster_weight"),
            fraction=("momentum",),
        )
        self.head_sizes = resolve_head_sizes(p, num_clusters)
        self.has_readout_head = bool(self.head_sizes) and self.head_sizes[0] == num_clusters
        if not self.has_readout_head:
            self.primary_readout = "kmeans"
        bn = p.mlp_batch_norm
        # G_θ and P_θ (Tables 5 and 10: two-layer MLPs with ReLU)
        self.projector = mlp(self.feature_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=bn)
        self.predictor = mlp(p.projection_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=bn)
        # P_c,k: one linear map r → K logits per head (Section 3.3), on the runner's representation r = F_θ(x)
        self.cluster_heads = nn.ModuleList(nn.Linear(self.feature_dim, k) for k in self.head_sizes)
        # E_φ = G_φ ∘ F_φ starts as an exact copy of the runner's G_θ ∘ F_θ and only ever moves by Eq. 8
        self.follower = frozen_copy(self._runner_encoder())
        self.momentum = float(p.momentum)

    def _runner_encoder(self) -> nn.Sequential:
        """``G_θ ∘ F_θ`` as one module (built on the fly: registering it would duplicate state-dict keys)."""
        return nn.Sequential(self.backbone, self.projector)

    def assignments(self, r: Tensor) -> list[Tensor]:
        """Every head's N×K membership matrix ``softmax(P_c,k(r))`` (Eq. 2), in float32."""
        return [torch.softmax(head(r).float(), dim=1) for head in self.cluster_heads]

    def cluster_probs(self, features: Tensor) -> Tensor | None:
        """The read-out head's soft assignments (N×K, K the run's number of clusters); ``None`` without one."""
        if not self.has_readout_head:
            return None
        return torch.softmax(self.cluster_heads[0](features).float(), dim=1)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``L_align + λ_clust·L_clust`` (Eq. 7); ``contrast`` and ``entropy`` are summed over the heads,
        unweighted, and ``cluster = contrast − λ_ent·entropy`` (Eq. 5–6)."""
        p = self.params
        view_a, view_b = self.views(batch.images)[:2]
        r_a, r_b = self.backbone(view_a), self.backbone(view_b)
        pred_a = self.predictor(self.projector(r_a))
        pred_b = self.predictor(self.projector(r_b))
        with torch.no_grad():
            target_a, target_b = self.follower(view_a), self.follower(view_b)
        align = alignment_loss(pred_a, target_b) + alignment_loss(pred_b, target_a)
        if p.align_views == "mean":
            align = 0.5 * align
        if not self.head_sizes:  # Table 4 (a): alignment only
            return {"loss": align, "align": align}
        # All heads' columns of both views in one 2×N×ΣK tensor, gathered in one collective under DDP so that
        # every column spans the global batch.
        probs = torch.stack([torch.cat(self.assignments(r), dim=1) for r in (r_a, r_b)])
        if self.gather:
            probs = all_gather_with_grad(probs.movedim(1, 0)).movedim(0, 1)
        contrast = probs.new_zeros(())
        entropy = probs.new_zeros(())
        for c in torch.split(probs, self.head_sizes, dim=-1):
            contrast = contrast + bca_contrast(
                c[0],
                c[1],
                p.temperature,
                negatives=p.negatives,
                positive_in_denominator=p.positive_in_denominator,
                similarity=p.similarity,
                symmetric=p.symmetric_contrast,
            )
            entropy = entropy + bca_entropy(c[0], c[1], views=p.entropy_views)
        cluster = contrast - p.entropy_weight * entropy
        return {
            "loss": align + p.cluster_weight * cluster,
            "align": align,
            "cluster": cluster,
            "contrast": contrast,
            "entropy": entropy,
        }

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """The follower's EMA update, ``φ ← γφ + (1 − γ)θ`` (Eq. 8), over parameters and BatchNorm statistics."""
        if self.params.momentum_schedule == "cosine":
            self.momentum = cosine_momentum(progress.fraction, self.params.momentum)
        ema_update_(self.follower, self._runner_encoder(), self.momentum)
