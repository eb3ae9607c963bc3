"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of Sinkhorn cluster codes between views.

``z = normalize(head(f(x)))`` with head Linear → BN → ReLU → Linear (out 128); scores ``zᵀc_k`` against
unit-norm prototypes ``C``; codes ``Q = Sinkhorn(scores / ε)`` (3 iterations, equipartition over the batch
and, optionally, a queue of earlier embeddings); loss: each assignment view's codes are predicted from the
softmax of every other view's scores at temperature τ, multi-crop's small views included
(``augment.small_crops``, 6 in the ``swav`` pipeline). Prototype gradients are dropped for the first
``freeze_prototypes_epochs`` epochs and the prototypes are renormalised after every step. See
docs/methods/swav.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from deepclust.distributed import world_size
from deepclust.errors import ConfigError
from deepclust.losses import sinkhorn, swav_loss
from deepclust.methods.base import Batch, TrainingProgress
from deepclust.methods.common import BackboneMethod
from deepclust.models import Prototypes, mlp
from deepclust.validation import check_ranges

# Codes are computed for the first two views, SwAV's ``crops_for_assign = [0, 1]``.
ASSIGN_VIEWS = 2


@dataclass
class SwAVConfig:
    """SwAV hyper-parameters (``params.*``).

    Attributes:
        projection_dim: output size of the head (paper: 128).
        hidden_dim: hidden width of the head (paper code: 2048).
        projector_batch_norm: BatchNorm in the head's hidden layer; the SwAV README suggests removing it when
            the loss sticks at ``ln(#prototypes)`` (collapse).
        num_prototypes: number of prototypes; ``None`` = K, which makes the argmax of the prototype scores a
            cluster read-out ("head"). Paper: 3000 on ImageNet.
        temperature: τ of the softmax over prototype scores (paper: 0.1).
        epsilon: ε of the Sinkhorn entropic regularisation (paper: 0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (paper: 3).
        freeze_prototypes_epochs: epochs during which the prototypes get no update (paper: the first epoch,
            313 steps at batch 4096 on ImageNet); counted in the loop's steps per epoch.
        queue_length: number of earlier embeddings per assignment view added to the Sinkhorn batch, over all
            processes; 0 = no queue (paper code: 3840 at batch 256).
        queue_start_epoch: epoch from which the queue is filled; it is used once full (paper code: 15). An
            epoch is the training loop's steps per epoch (``TrainingProgress.steps_per_epoch``).
    """

    projection_dim: int = 128
    hidden_dim: int = 2048
    projector_batch_norm: bool = True
    num_prototypes: int | None = None
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_epochs: float = 1.0
    queue_length: int = 0
    queue_start_epoch: float = 15.0


class SwAV(BackboneMethod):
    """SwAV: backbone + head + prototypes, Sinkhorn codes, swapped prediction, optional queue."""

    Config: ClassVar[type | None] = SwAVConfig
    DEFAULTS: ClassVar[dict[str, Any]] = {"augment": {"pipeline": "swav"}}
    #: "head" when there are K prototypes (the default); an instance with another count reads out k-means.
    primary_readout: ClassVar[str] = "head"
    multi_crop: ClassVar[bool] = True
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.projection_dim=8", "params.hidden_dim=16")

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_ranges(
            p,
            "params.",
            positive=("epsilon", "temperature"),
            at_least_one=("projection_dim", "hidden_dim", "sinkhorn_iterations"),
            non_negative=("freeze_prototypes_epochs", "queue_start_epoch"),
        )
        if p.queue_length < 0:
            raise ConfigError(f"params.queue_length must be 0 (no queue) or positive, got {p.queue_length}")
        self.num_prototypes = num_clusters if p.num_prototypes is None else int(p.num_prototypes)
        if self.num_prototypes < 2:
            raise ConfigError(f"params.num_prototypes must be at least 2, got {self.num_prototypes}")
        if self.num_prototypes != num_clusters:
            self.primary_readout = "kmeans"
        self.projector = mlp(
            self.feature_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=p.projector_batch_norm
        )
        self.prototypes = Prototypes(p.projection_dim, self.num_prototypes)
        # A registered buffer, created here with its final shape, so that it round-trips through checkpoints;
        # each process keeps its share of the global queue, as in the SwAV code.
        local_length = p.queue_length // world_size() if p.queue_length else 0
        self.register_buffer("queue", torch.zeros(ASSIGN_VIEWS, local_length, p.projection_dim))
        # Host-side counters (no device sync to read them in forward); saved through get_extra_state.
        self._queue_filled = 0
        self._steps_done = 0
        self._steps_per_epoch: float | None = None

    def _queue_active(self) -> bool:
        """Whether this step pushes embeddings into the queue (from ``queue_start_epoch`` on)."""
        if self.queue.shape[1] == 0:
            return False
        start = self.params.queue_start_epoch
        if start <= 0:
            return True
        return self._steps_per_epoch is not None and self._steps_done >= start * self._steps_per_epoch

    def _codes(self, scores: Tensor, batch: int, use_queue: bool) -> list[Tensor]:
        """Sinkhorn codes of the assignment views from their fp32 scores (and the queue's, once it is full)."""
        codes = []
        with torch.no_grad(), torch.autocast(device_type=scores.device.type, enabled=False):
            for view in range(ASSIGN_VIEWS):
                view_scores = scores[view * batch : (view + 1) * batch].detach()
                if use_queue:
                    view_scores = torch.cat([self.prototypes(self.queue[view]), view_scores])
                q = sinkhorn(
                    view_scores, self.params.epsilon, self.params.sinkhorn_iterations, distributed=self.gather
                )
                codes.append(q[-batch:])
        return codes

    def _push(self, z: Tensor, batch: int) -> None:
        """Prepend this batch's assignment-view embeddings to the queue, dropping the oldest."""
        new = z[: ASSIGN_VIEWS * batch].detach().float().reshape(ASSIGN_VIEWS, batch, -1)
        length = self.queue.shape[1]
        self.queue.copy_(torch.cat([new, self.queue], dim=1)[:, :length])
        self._queue_filled = min(length, self._queue_filled + batch)

    def embed(self, views: list[Tensor]) -> Tensor:
        """Unit-norm projections of all views, in view order. As in the SwAV code, views of one size share a
        backbone pass, and the head (with its BatchNorm) sees the features of all views at once."""
        large = self.augmenter.config.num_views
        groups = [views[:large], views[large:]] if len(views) > large else [views]
        features = torch.cat([self.backbone(torch.cat(group)) for group in groups])
        return F.normalize(self.projector(features), dim=1)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """SwAV's swapped-prediction loss (Caron et al. 2020, Eq. 1 and 2, with multi-crop) over all views."""
        views = self.views(batch.images)
        batch = views[0].shape[0]
        z = self.embed(views)
        # Scores in fp32 outside autocast: Sinkhorn's exp(s/ε) overflows fp16 and bf16 cosines are too coarse
        # for s/ε; the matmul is small (views·N × d × K).
        with torch.autocast(device_type=z.device.type, enabled=False):
            scores = self.prototypes(z.float())
        active = self._queue_active()
        # As in SwAV, the queue joins the Sinkhorn batch only once it is full of real embeddings.
        codes = self._codes(scores, batch, use_queue=active and self._queue_filled >= self.queue.shape[1])
        if active:
            self._push(z, batch)
        loss = swav_loss(list(scores.chunk(len(views))), codes, self.params.temperature)
        return {"loss": loss, "swav": loss}

    def on_before_optimizer_step(self, progress: TrainingProgress) -> None:
        """Drop the prototypes' gradients while they are frozen (no update, no weight decay)."""
        if progress.step < round(self.params.freeze_prototypes_epochs * progress.steps_per_epoch):
            for param in self.prototypes.parameters():
                param.grad = None

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """Renormalise the prototypes to unit rows; track the step for the queue's start."""
        self.prototypes.normalize_()
        self._steps_done = progress.step + 1
        self._steps_per_epoch = progress.steps_per_epoch

    def cluster_probs(self, features: Tensor) -> Tensor | None:
        """Softmax of the prototype scores at temperature τ when there are K prototypes, else ``None``."""
        if self.num_prototypes != self.num_clusters:
            return None
        scores = self.prototypes(F.normalize(self.projector(features), dim=1))
        return torch.softmax(scores.float() / self.params.temperature, dim=1)

    def get_extra_state(self) -> dict[str, Any]:
        """Host-side counters, stored in the state dict next to the queue buffer."""
        return {
            "queue_filled": self._queue_filled,
            "steps_done": self._steps_done,
            "steps_per_epoch": self._steps_per_epoch,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the counters of :meth:`get_extra_state`."""
        self._queue_filled = int(state["queue_filled"])
        self._steps_done = int(state["steps_done"])
        self._steps_per_epoch = state["steps_per_epoch"]
