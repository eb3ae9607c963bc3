"""Plumbing shared by the view-based methods (SimCLR, BYOL, SwAV, CC and the methods built on them).

:class:`BackboneMethod` owns the two things every such method has: a
:class:`~deepclust.data.augment.ViewAugmenter` that turns a uint8 batch into augmented float views on the
training device, and a backbone that maps a view to its representation ``h``. It also implements the read-out:
``features`` are the backbone features ``h`` (what k-means clusters, following the papers, which
cluster/evaluate the representation before the projector; ProPos overrides it with its target projections, where
its authors evaluate), and ``probs`` come from
:meth:`BackboneMethod.cluster_probs` for methods that have a cluster head.

Normalisation statistics. The method is not told the dataset's per-channel mean/std, and computing them would
need a pass over the data, so the statistics are fixed and dataset-independent: ImageNet's for 3-channel
images (what the SimCLR/BYOL/SwAV pipelines use) and ``mean 0.5, std 0.25`` per channel otherwise (grayscale
and any other channel count: it maps [0, 1] pixels to roughly [-2, 2]). ``augment.normalize=false`` (CC's
pipeline, which has no ``Normalize``) turns normalisation off altogether.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from deepclust.data.augment import ViewAugmenter
from deepclust.distributed import all_reduce_sum, is_distributed, world_size
from deepclust.errors import ConfigError
from deepclust.methods.base import Method
from deepclust.models import Backbone, build_backbone

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GENERIC_MEAN = 0.5
GENERIC_STD = 0.25


def normalization_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std): ImageNet statistics for RGB, ``(0.5, 0.25)`` per channel otherwise."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (GENERIC_MEAN,) * channels, (GENERIC_STD,) * channels


def build_augmenter(cfg: DictConfig, image_shape: tuple[int, int, int]) -> ViewAugmenter:
    """The view augmenter for ``C×H×W`` images, with the fixed statistics of :func:`normalization_stats`.

    Its views are ``augment.image_size`` px square when that is set, else the images' native height.
    """
    channels = int(image_shape[0])
    mean, std = normalization_stats(channels)
    return ViewAugmenter(cfg.augment, channels, int(image_shape[1]), mean, std)


def first_mismatch(err: Exception) -> str:
    """The first specific line of a ``load_state_dict`` error (the first line only says that loading failed)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else lines[0] if lines else "unknown error"
    return line if len(line) <= 160 else line[:157] + "..."  # a list of missing keys can run to pages


def readout_outputs(features: Tensor, probs: Tensor | None = None) -> dict[str, Tensor]:
    """The read-out dict in float32 (autocast may have produced bf16/fp16), without autograd history."""
    out = {"features": features.detach().float()}
    if probs is not None:
        out["probs"] = probs.detach().float()
    return out


def running_head_losses(num_heads: int, momentum: float) -> Tensor:
    """The running-loss buffer of ``num_heads`` cluster heads, NaN until their first step, after checking the
    ``params.num_heads`` and ``params.head_loss_momentum`` settings (a :class:`ConfigError` if they are invalid)."""
    if num_heads < 1:
        raise ConfigError(f"params.num_heads must be at least 1, got {num_heads}")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"params.head_loss_momentum must be in [0, 1), got {momentum}")
    return torch.full((num_heads,), float("nan"))


@torch.no_grad()
def update_running_losses(running: Tensor, losses: Tensor, momentum: float) -> None:
    """Exponential average, in place, of each cluster head's loss over training steps (NaN entries of
    ``running`` mean "no step yet" and take the first value). The step's losses are averaged over processes
    first, so that every process reads out the same head."""
    losses = all_reduce_sum(losses.detach().clone()) / world_size()
    running.copy_(torch.where(torch.isnan(running), losses, momentum * running + (1 - momentum) * losses))


def lowest_running_loss(running: Tensor) -> Tensor:
    """1-element index of the head with the lowest running loss (head 0 before any step: NaN reads as ∞), on
    the buffer's device, so that a training step can use it without waiting for the device."""
    return torch.nan_to_num(running, nan=float("inf")).argmin().view(1)


def at_head(values: Tensor, head: Tensor) -> Tensor:
    """``values[head]`` for a 1-element index on the device: ``index_select`` reads the index on the device
    (a Python-style ``values[head]`` may copy it to the host first, which waits for the GPU)."""
    return values.index_select(0, head).squeeze(0)


class BackboneMethod(Method):
    """A :class:`Method` with a view augmenter (``self.augmenter``) and a backbone (``self.backbone``).

    Subclasses add their heads and losses in ``__init__``/``forward`` and, when they have a cluster head,
    override :meth:`cluster_probs`.
    """

    #: the fewest augmented views per image the method's loss works with
    min_views: ClassVar[int] = 2
    #: whether the loss uses multi-crop's small views (``augment.small_crops``); the others refuse them
    multi_crop: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        self.augmenter = build_augmenter(cfg, image_shape)
        views = self.augmenter.config.num_views
        if views < self.min_views:
            raise ConfigError(
                f"augment.num_views must be at least {self.min_views} for method {cfg.method!r}, got {views}"
            )
        small_crops = self.augmenter.config.small_crops
        if small_crops and not self.multi_crop:
            raise ConfigError(
                f"method {cfg.method!r} does not use multi-crop's small views; set augment.small_crops=0 "
                f"(got {small_crops})"
            )
        self.backbone: Backbone = build_backbone(cfg.model, int(image_shape[0]), self.augmenter.image_size)
        self.feature_dim = int(self.backbone.feature_dim)
        self._channels_last = bool(cfg.train.channels_last)

    @property
    def gather(self) -> bool:
        """Whether losses must gather across processes (read per call: DDP may start after construction)."""
        return is_distributed()

    def prepare(self, view: Tensor) -> Tensor:
        """A view in the memory format the backbone is trained in (channels-last convolutions are faster)."""
        if self._channels_last and view.ndim == 4:
            return view.contiguous(memory_format=torch.channels_last)
        return view

    def views(self, images: Tensor) -> list[Tensor]:
        """Augmented float views of a uint8 batch (``augment.num_views`` of them, then ``augment.small_crops``
        small ones), ready for the backbone."""
        return [self.prepare(v) for v in self.augmenter(images)]

    def cluster_probs(self, features: Tensor) -> Tensor | None:
        """N×K soft cluster assignments from backbone features; ``None`` for methods without cluster head."""
        return None

    @torch.no_grad()
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        """Backbone features of the evaluation view and, with a cluster head, its soft assignments."""
        features = self.backbone(self.prepare(self.augmenter.eval_view(images)))
        return readout_outputs(features, self.cluster_probs(features))
