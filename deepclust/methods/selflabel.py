"""Self-labelling (SCAN, Van Gansbeke et al., ECCV 2020, Sec. 2.3): fine-tune a clustering model on its own
confident predictions.

The model is a finished run of any method with a cluster head (``cc``, ``scan``, ``swav`` with K prototypes):
``params.pretrained`` names its run directory, whose configuration rebuilds the method and whose last
checkpoint fills it. Every step, the evaluation view of each image (resize only) gives the pseudo-label
wherever the head is more confident than ``params.threshold``, and the cross-entropy of an augmented view
against those labels, weighted by the inverse frequency of each pseudo-class in the batch, trains the backbone
and the head. ``params.selection=top_per_cluster`` takes the same number of most confident samples from every
cluster instead (TCL's boosting, SPICE), and ``params.keep_objective`` keeps training the pretrained method's
own loss alongside. See docs/methods/selflabel.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from deepclust.errors import ConfigError, UserError
from deepclust.evaluation.readout import HEAD
from deepclust.losses.self_label import confident_self_label_loss, top_per_cluster_self_label_loss
from deepclust.methods.base import Batch, Method, TrainingProgress
from deepclust.methods.common import BackboneMethod, build_augmenter, readout_outputs
from deepclust.validation import check_choice


@dataclass
class SelfLabelConfig:
    """Self-labelling hyper-parameters (``params.*``).

    Attributes:
        pretrained: run directory of the model to fine-tune (a method with a cluster head, same dataset).
        selection: which predictions become pseudo-labels: "threshold" (SCAN: every one more confident
            than ``threshold``) or "top_per_cluster" (TCL / SPICE: the ``per_cluster_fraction · N / K`` most
            confident of each cluster in the batch, above ``threshold``).
        threshold: confidence above which a prediction may become a pseudo-label (SCAN: 0.99).
        balanced: with "threshold", weight each pseudo-class by the inverse of its frequency among the
            confident samples.
        per_cluster_fraction: with "top_per_cluster", the share of a balanced cluster's size kept per cluster.
        keep_objective: weight of the pretrained method's own loss, trained alongside the cross-entropy (0 in
            SCAN; TCL's boosting stage keeps its contrastive losses, which hold the clusters apart).
    """

    pretrained: str | None = None
    selection: str = "threshold"
    threshold: float = 0.99
    balanced: bool = True
    per_cluster_fraction: float = 0.5
    keep_objective: float = 0.0


SELECTIONS = ("threshold", "top_per_cluster")


def has_cluster_head(method: Method, image_shape: tuple[int, int, int]) -> bool:
    """Whether the method's read-out has soft assignments (``probs``), asked on one blank image in eval mode."""
    was_training = method.training
    method.eval()
    try:
        return HEAD in method.readout(torch.zeros(1, *image_shape, dtype=torch.uint8))
    finally:
        method.train(was_training)


class SelfLabel(Method):
    """Fine-tunes a pretrained clustering model on its confident, class-balanced pseudo-labels."""

    Config: ClassVar[type | None] = SelfLabelConfig
    # The paper's self-labelling step: Adam at 1e-4 with weight decay 1e-4 and a constant rate.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 1e-4, "schedule": "constant"},
    }
    primary_readout: ClassVar[str] = "head"
    pretrained_setting: ClassVar[str | None] = "params.pretrained"
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.threshold=0.1",)
    pretrained_on_same_data: ClassVar[bool] = True
    pretrained_purpose: ClassVar[str] = "self-labelling fine-tunes a clustering of the same data"
    #: the pretrained method being fine-tuned (set by :meth:`start_from`)
    model: BackboneMethod

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.selection", p.selection, SELECTIONS)
        # A threshold of 0 keeps everything, which only the per-cluster selection can still balance.
        if not (0.0 <= p.threshold < 1.0 and (p.threshold > 0.0 or p.selection == "top_per_cluster")):
            raise ConfigError(f"params.threshold must be between 0 and 1, got {p.threshold}")
        if not 0.0 < p.per_cluster_fraction <= 1.0:
            raise ConfigError(f"params.per_cluster_fraction must be in (0, 1], got {p.per_cluster_fraction}")
        if p.keep_objective < 0.0:
            raise ConfigError(f"params.keep_objective must be 0 or more, got {p.keep_objective}")
        if self.params.pretrained is None:
            raise ConfigError(
                "self-labelling fine-tunes a finished clustering run: set params.pretrained=RUN_DIR "
                "(a cc, scan or swav run with K prototypes)"
            )
        self.keeps_objective = p.keep_objective > 0.0
        self.augmenter = build_augmenter(cfg, image_shape)

    def start_from(self, pretrained: Method, source: str) -> None:
        """Fine-tune ``pretrained``, which must have a cluster head."""
        if not isinstance(pretrained, BackboneMethod) or not has_cluster_head(pretrained, self.image_shape):
            raise UserError(
                f"{source}: the {pretrained.cfg.method} run has no cluster head to self-label "
                "(use cc, scan, or swav with K prototypes)"
            )
        if self.augmenter.image_size != pretrained.augmenter.image_size:
            raise ConfigError(
                f"the pretrained run sees {pretrained.augmenter.image_size} px views and this one "
                f"{self.augmenter.image_size} px: set augment.image_size={pretrained.augmenter.image_size}"
            )
        self.model = pretrained

    def _probs(self, view: Tensor) -> Tensor:
        probs = self.model.cluster_probs(self.model.backbone(self.model.prepare(view)))
        assert probs is not None  # start_from accepted only a model with a cluster head
        return probs

    def companion_indices(self, indices: Tensor, generator: torch.Generator) -> Tensor | None:
        """The kept objective's companions (SCAN's neighbours), when the pretrained method's loss is kept."""
        return self.model.companion_indices(indices, generator) if self.keeps_objective else None

    def on_before_optimizer_step(self, progress: TrainingProgress) -> None:
        if self.keeps_objective:
            self.model.on_before_optimizer_step(progress)

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        if self.keeps_objective:
            self.model.on_after_optimizer_step(progress)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy of an augmented view against the selected predictions on the evaluation view, plus
        ``keep_objective`` times the pretrained method's own loss."""
        p, images = self.params, batch.images
        with torch.no_grad():
            p_weak = self._probs(self.augmenter.eval_view(images))
        p_strong = self._probs(self.augmenter.view(images))
        if p.selection == "top_per_cluster":
            label_loss, share = top_per_cluster_self_label_loss(
                p_weak, p_strong, p.per_cluster_fraction, p.threshold
            )
        else:
            label_loss, share = confident_self_label_loss(p_weak, p_strong, p.threshold, balanced=p.balanced)
        losses = {"loss": label_loss, "self_label": label_loss, "confident_share": share}
        if self.keeps_objective:
            kept = self.model(batch)
            losses["loss"] = label_loss + p.keep_objective * kept["loss"]
            losses.update({f"{self.model.cfg.method}_{name}": value for name, value in kept.items()})
        return losses

    @torch.no_grad()
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        features = self.model.backbone(self.model.prepare(self.augmenter.eval_view(images)))
        return readout_outputs(features, self.model.cluster_probs(features))
