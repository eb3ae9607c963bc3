"""ProPos (Huang et al., TPAMI 2022): BYOL with positive sampling alignment and prototype scattering.

ProPos extends :class:`~deepclust.methods.byol.BYOL` with two changes, both switched on after
``params.warmup_epochs`` of plain BYOL:

- *Pseudo-labels.* At the start of every ``params.reassign_every_epochs``-th epoch, k-means clusters the
  L2-normalised target projections ``z'_ξ`` of every image's evaluation view into K clusters (the E step of the
  paper's EM view). The labels are kept with the method's state, so a resumed run continues with them.
- *Loss.* ``L = L_PSA + λ L_PSL`` (M step):
  - ``L_PSA``, positive sampling alignment: BYOL's normalised MSE, with the online projection perturbed by
    Gaussian noise of standard deviation σ before the predictor (the "positive" is sampled around the
    instance in the latent space);
  - ``L_PSL``, the prototype scattering loss of :func:`~deepclust.losses.prototype_scattering_loss` between
    the batch's online and target cluster prototypes under the pseudo-labels.
  Both terms are averaged over the two view orders.

Read-out: k-means on the L2-normalised target projections, the space the pseudo-labels come from (the
authors' code evaluates there too), not on the backbone features as BYOL does. As in the code, the target's
momentum is constant (``params.momentum_schedule=constant``) and the predictor learns at
``params.predictor_lr_scale`` times the base rate. See docs/methods/propos.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from deepclust.data import ArrayDataset
from deepclust.distributed import all_gather_with_grad, broadcast_
from deepclust.evaluation.kmeans import kmeans
from deepclust.evaluation.metrics import evaluate_clustering
from deepclust.evaluation.readout import extract
from deepclust.losses import byol_loss, prototype_scattering_loss
from deepclust.methods.base import Batch, TrainingProgress
from deepclust.methods.byol import BYOL, BYOLConfig
from deepclust.methods.common import readout_outputs
from deepclust.models.ema import ema_update_
from deepclust.validation import check_choice, check_ranges

MOMENTUM_SCHEDULES = ("constant", "cosine")


@dataclass
class ProPosConfig(BYOLConfig):
    """ProPos hyper-parameters (``params.*``); the defaults are the authors' CIFAR-10 configuration.

    Attributes:
        temperature: τ of the prototype scattering loss (code: 0.5).
        cluster_weight: λ, the weight of the prototype scattering loss (code: 0.1).
        latent_std: σ of the Gaussian noise added to the online projection (code: 0.001).
        warmup_epochs: epochs of plain BYOL before pseudo-labels, the scattering loss and the noise start
            (code: 50 of 1,000).
        reassign_every_epochs: how often k-means recomputes the pseudo-labels (code: every epoch).
        pseudo_label_n_init: k-means restarts per assignment (the run's ``kmeans.n_init`` is for read-outs).
        momentum_schedule: ``constant`` keeps the target's momentum at ``base_momentum`` (code); ``cosine``
            raises it to 1 as BYOL does.
        predictor_lr_scale: the predictor's learning rate relative to the base rate (code: 10).
    """

    base_momentum: float = 0.996
    temperature: float = 0.5
    cluster_weight: float = 0.1
    latent_std: float = 0.001
    warmup_epochs: int = 50
    reassign_every_epochs: int = 1
    pseudo_label_n_init: int = 3
    momentum_schedule: str = "constant"
    predictor_lr_scale: float = 10.0


class ProPos(BYOL):
    """BYOL + latent-noise alignment + prototype scattering over per-epoch k-means pseudo-labels."""

    Config: ClassVar[type | None] = ProPosConfig

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.momentum_schedule", p.momentum_schedule, MOMENTUM_SCHEDULES)
        # BYOL's __init__ has checked the head sizes and the momentum
        check_ranges(
            p,
            "params.",
            positive=("temperature", "predictor_lr_scale"),
            at_least_one=("reassign_every_epochs", "pseudo_label_n_init"),
            non_negative=("cluster_weight", "latent_std", "warmup_epochs"),
        )
        # one k-means label per dataset sample, empty until the first assignment, saved through get_extra_state
        self.pseudo_labels = torch.empty(0, dtype=torch.int64)
        # their copy on the training device (made at the first step that needs it): a batch's lookup then costs
        # no host sync, and works whether its indices arrive on the CPU or, moved by DDP, on the GPU
        self._device_labels: Tensor | None = None

    @property
    def clustering(self) -> bool:
        """Whether pseudo-labels exist, i.e. the warm-up is over: the scattering loss and the noise are on."""
        return len(self.pseudo_labels) > 0

    def target_embeddings(self, view: Tensor) -> Tensor:
        """L2-normalised target projections ``z'_ξ`` of a view."""
        return F.normalize(self.target(view).float(), dim=1)

    @torch.no_grad()
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        """Target projections of the evaluation view (what k-means clusters, as in the authors' code)."""
        return readout_outputs(self.target_embeddings(self.prepare(self.augmenter.eval_view(images))))

    def on_epoch_start(self, dataset: ArrayDataset, device: torch.device, epoch: int) -> dict[str, Any]:
        """The E step: k-means pseudo-labels of the whole dataset, every ``reassign_every_epochs`` epochs
        from ``warmup_epochs`` on."""
        p = self.params
        if epoch < p.warmup_epochs or (epoch - p.warmup_epochs) % p.reassign_every_epochs:
            return {}
        embeddings = extract(self, dataset, device)["features"]
        result = kmeans(
            embeddings,
            self.num_clusters,
            n_init=p.pseudo_label_n_init,
            max_iter=self.cfg.kmeans.max_iter,
            seed=self.cfg.seed + epoch,
            backend=self.cfg.kmeans.backend,
        )
        # every process computes the same labels from the same weights; rank 0's make sure of it
        self._set_pseudo_labels(broadcast_(torch.from_numpy(result.labels).to(device)).cpu())
        labels = self.pseudo_labels.numpy()
        sizes = np.bincount(labels, minlength=self.num_clusters)
        stats: dict[str, Any] = {"largest_cluster": round(float(sizes.max() / sizes.sum()), 4)}
        if dataset.labels is not None:
            stats["pseudo_label_acc"] = round(evaluate_clustering(dataset.labels, labels)["acc"], 4)
        return stats

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``L_PSA + λ L_PSL`` over both view orders (plain BYOL during the warm-up)."""
        view_a, view_b = self.views(batch.images)[:2]
        proj_a = self.projector(self.backbone(view_a))
        proj_b = self.projector(self.backbone(view_b))
        with torch.no_grad():
            target_a, target_b = self.target(view_a), self.target(view_b)
        clustering = self.clustering
        std = self.params.latent_std if clustering else 0.0
        alignment = 0.5 * (
            byol_loss(self.predictor(proj_a + std * torch.randn_like(proj_a)), target_b)
            + byol_loss(self.predictor(proj_b + std * torch.randn_like(proj_b)), target_a)
        )
        losses = {"alignment": alignment}
        loss = alignment
        if clustering:
            indices = batch.require_indices("ProPos")
            labels = all_gather_with_grad(self._batch_labels(indices, proj_a.device))
            online_a, online_b = (all_gather_with_grad(F.normalize(z, dim=1)) for z in (proj_a, proj_b))
            target_a, target_b = (all_gather_with_grad(F.normalize(z, dim=1)) for z in (target_a, target_b))
            k = self.num_clusters
            tau = self.params.temperature
            scattering = 0.5 * (
                prototype_scattering_loss(online_a, target_b, labels, k, tau)
                + prototype_scattering_loss(online_b, target_a, labels, k, tau)
            )
            losses["scattering"] = scattering
            loss = loss + self.params.cluster_weight * scattering
        return {"loss": loss, **losses}

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """EMA update of the target: constant momentum (the authors' code) or BYOL's cosine schedule."""
        if self.params.momentum_schedule == "cosine":
            super().on_after_optimizer_step(progress)
        else:
            ema_update_(self.target, self._online_encoder(), self.momentum)

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """BYOL's groups, with the predictor's parameters in groups of their own at ``predictor_lr_scale``."""
        predictor = {id(param) for param in self.predictor.parameters()}
        groups = []
        for group in super().parameter_groups(weight_decay):
            rest = [param for param in group["params"] if id(param) not in predictor]
            mine = [param for param in group["params"] if id(param) in predictor]
            groups.append({**group, "params": rest})
            groups.append({**group, "params": mine, "lr_scale": self.params.predictor_lr_scale})
        return groups

    def _set_pseudo_labels(self, labels: Tensor) -> None:
        self.pseudo_labels = labels
        self._device_labels = None

    def _batch_labels(self, indices: Tensor, device: torch.device) -> Tensor:
        """The pseudo-labels of the batch's dataset ``indices``, on ``device``."""
        if self._device_labels is None or self._device_labels.device != device:
            self._device_labels = self.pseudo_labels.to(device)
        return self._device_labels[indices.to(device, non_blocking=True)]

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"pseudo_labels": self.pseudo_labels}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._set_pseudo_labels(state["pseudo_labels"].cpu())
