"""Self-labelling (SCAN, Van Gansbeke et al., ECCV 2020, Sec. 2.3): fine-tune a clustering model on its own
confident predictions.

The model is a finished run of any method with a cluster head (``cc``, ``scan``, ``swav`` with K prototypes):
``params.pretrained`` names its run directory, whose configuration rebuilds the method and whose last
checkpoint fills it. Every step, the evaluation view of each image (resize only) gives the pseudo-label
wherever the head is more confident than ``params.threshold``, and the cross-entropy of an augmented view
against those labels, weighted by the inverse frequency of each pseudo-class in the batch, trains the backbone
and the head. See docs/methods/selflabel.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from deepclust.engine.checkpoint import load_checkpoint
from deepclust.engine.run_dir import RunDir
from deepclust.errors import ConfigError, UserError
from deepclust.losses.self_label import confident_self_label_loss
from deepclust.methods.base import Method
from deepclust.methods.common import BackboneMethod, build_augmenter, first_mismatch, readout_outputs


@dataclass
class SelfLabelConfig:
    """Self-labelling hyper-parameters (``params.*``).

    Attributes:
        pretrained: run directory of the model to fine-tune (a method with a cluster head, same dataset).
        threshold: confidence above which a prediction becomes a pseudo-label (paper: 0.99).
        balanced: weight each pseudo-class by the inverse of its frequency among the confident samples.
    """

    pretrained: str | None = None
    threshold: float = 0.99
    balanced: bool = True


def load_pretrained_method(
    source: str, data: DictConfig, image_shape: tuple[int, int, int], num_clusters: int
) -> Method:
    """The method of a finished run on the same data (``data``: this run's ``data`` section), rebuilt from its
    ``config.yaml`` and filled from ``checkpoints/last.pt``."""
    from deepclust.config import build_config  # local: the configuration module imports the method registry
    from deepclust.methods import method_class

    run = RunDir.open_existing(source)
    checkpoint = run.checkpoint_dir / "last.pt"
    if not checkpoint.is_file():
        raise UserError(f"params.pretrained: {run.path} has no checkpoint to start from ({checkpoint})")
    cfg = build_config(config_file=run.path / "config.yaml")
    for key in ("name", "split", "num_clusters"):
        if cfg.data[key] != data[key]:
            raise UserError(
                f"params.pretrained: {run.path} was trained with data.{key}={cfg.data[key]}, this run has "
                f"data.{key}={data[key]}; self-labelling fine-tunes a clustering of the same data"
            )
    if not method_class(cfg.method).trainable:
        raise UserError(f"params.pretrained: {run.path} is a {cfg.method} run, which has no trained model")
    method: Method = method_class(cfg.method)(cfg, image_shape, num_clusters)
    try:
        method.load_state_dict(load_checkpoint(checkpoint)["method"])
    except RuntimeError as err:
        raise UserError(
            f"params.pretrained: {checkpoint} does not fit its own configuration ({first_mismatch(err)})"
        ) from None
    return method


def has_cluster_head(method: Method, image_shape: tuple[int, int, int]) -> bool:
    """Whether the method's read-out has soft assignments (``probs``), asked on one blank image in eval mode."""
    was_training = method.training
    method.eval()
    try:
        return "probs" in method.readout(torch.zeros(1, *image_shape, dtype=torch.uint8))
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

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        if not 0.0 < self.params.threshold < 1.0:
            raise ConfigError(f"params.threshold must be between 0 and 1, got {self.params.threshold}")
        if self.params.pretrained is None:
            raise ConfigError(
                "self-labelling fine-tunes a finished clustering run: set params.pretrained=RUN_DIR "
                "(a cc, scan or swav run with K prototypes)"
            )
        model = load_pretrained_method(self.params.pretrained, cfg.data, image_shape, num_clusters)
        if not isinstance(model, BackboneMethod) or not has_cluster_head(model, image_shape):
            raise UserError(
                f"params.pretrained: the {model.cfg.method} run in {self.params.pretrained} has no cluster head "
                "to self-label (use cc, scan, or swav with K prototypes)"
            )
        self.model = model
        self.augmenter = build_augmenter(cfg, image_shape)
        if self.augmenter.image_size != model.augmenter.image_size:
            raise ConfigError(
                f"the pretrained run sees {model.augmenter.image_size} px views and this one "
                f"{self.augmenter.image_size} px: set augment.image_size={model.augmenter.image_size}"
            )

    def _probs(self, view: Tensor) -> Tensor:
        return self.model.cluster_probs(self.model.backbone(self.model.prepare(view)))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of an augmented view against the confident predictions on the evaluation view."""
        with torch.no_grad():
            p_weak = self._probs(self.augmenter.eval_view(images))
        p_strong = self._probs(self.augmenter.view(images))
        loss, share = confident_self_label_loss(
            p_weak, p_strong, self.params.threshold, balanced=self.params.balanced
        )
        return {"loss": loss, "confident_share": share}

    @torch.no_grad()
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        features = self.model.backbone(self.model.prepare(self.augmenter.eval_view(images)))
        return readout_outputs(features, self.model.cluster_probs(features))
