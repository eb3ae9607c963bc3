"""BYOL (Grill et al., NeurIPS 2020): an online network predicts an EMA target network's projection.

Online: backbone ``f_θ`` → projector ``g_θ`` (Linear → BN → ReLU → Linear, 4096 → 256) → predictor
``q_θ`` (same shape). Target: ``f_ξ, g_ξ``, an exponential moving average of ``f_θ, g_θ`` that gets no
gradient, updated after every optimiser step with ``ξ ← τξ + (1 − τ)θ`` and ``τ`` following the cosine
schedule of :func:`~deepclust.models.ema.cosine_momentum`. Each view goes through the networks separately
(BatchNorm statistics per view, as in the authors' code). Clustering reads out k-means on the online backbone
features. See docs/methods/byol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from deepclust.losses import byol_loss
from deepclust.methods.base import Batch, TrainingProgress
from deepclust.methods.common import BackboneMethod
from deepclust.models import mlp
from deepclust.models.ema import cosine_momentum, ema_update_, frozen_copy
from deepclust.validation import check_ranges


@dataclass
class BYOLConfig:
    """BYOL hyper-parameters (``params.*``).

    Attributes:
        projection_dim: output size of the projector and the predictor (paper: 256).
        hidden_dim: hidden width of the projector and the predictor (paper: 4096).
        base_momentum: ``τ_base`` of the target EMA (paper: 0.996 at batch 4096; 0.99 is common at batch 256).
    """

    projection_dim: int = 256
    hidden_dim: int = 4096
    base_momentum: float = 0.996


class BYOL(BackboneMethod):
    """BYOL: online backbone + projector + predictor, EMA target backbone + projector, symmetric loss."""

    Config: ClassVar[type | None] = BYOLConfig
    DEFAULTS: ClassVar[dict[str, Any]] = {"augment": {"pipeline": "byol"}}
    primary_readout: ClassVar[str] = "kmeans"
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.projection_dim=8", "params.hidden_dim=16")

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_ranges(p, "params.", at_least_one=("projection_dim", "hidden_dim"), fraction=("base_momentum",))
        self.projector = mlp(self.feature_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=True)
        self.predictor = mlp(p.projection_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=True)
        # The target starts as an exact copy of the online encoder (paper §3.2) and only ever moves by EMA.
        self.target = frozen_copy(self._online_encoder())
        self.momentum = float(p.base_momentum)

    def _online_encoder(self) -> nn.Sequential:
        """``g_θ ∘ f_θ`` as one module (built on the fly: registering it would duplicate state-dict keys)."""
        return nn.Sequential(self.backbone, self.projector)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Symmetric BYOL loss (Grill et al. 2020, Eq. 2 plus its view-swapped ``L̃``)."""
        view_a, view_b = self.views(batch.images)[:2]
        pred_a = self.predictor(self.projector(self.backbone(view_a)))
        pred_b = self.predictor(self.projector(self.backbone(view_b)))
        with torch.no_grad():
            target_a = self.target(view_a)
            target_b = self.target(view_b)
        loss_ab = byol_loss(pred_a, target_b)
        loss_ba = byol_loss(pred_b, target_a)
        loss = loss_ab + loss_ba
        return {"loss": loss, "byol": loss}

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """EMA update of the target with the momentum of this step (paper §3.2, cosine schedule)."""
        self.momentum = cosine_momentum(progress.fraction, self.params.base_momentum)
        ema_update_(self.target, self._online_encoder(), self.momentum)
