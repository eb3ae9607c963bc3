"""Plumbing shared by the view-based methods (SimCLR, BYOL, SwAV, CC and the methods built on them).

:class:`BackboneMethod` owns the two things every such method has: a
:class:`~deepclust.data.augment.ViewAugmenter` that turns a uint8 batch into augmented float views on the
training device, and a backbone that maps a view to its representation ``h``. It also implements the read-out:
``features`` are the backbone features ``h`` (what k-means clusters, following the papers, which
cluster/evaluate the representation before the projector; ProPos overrides it with its target projections, where
its authors evaluate), and ``probs`` come from
:meth:`BackboneMethod.cluster_probs` for methods that have a cluster head. :class:`NeighbourPositives` is an
option of the two-view contrastive methods: NNCLR's nearest neighbours from a support set as the anchors.

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
from torch import Tensor, nn

from deepclust.data.augment import ViewAugmenter
from deepclust.distributed import is_distributed
from deepclust.errors import ConfigError
from deepclust.losses import nearest_neighbour_contrast, nt_xent
from deepclust.methods.base import Method
from deepclust.models import Backbone, build_backbone
from deepclust.models.support_set import SupportSet, pixel_key_size, pixel_keys

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


def readout_outputs(features: Tensor, head: Tensor | None = None) -> dict[str, Tensor]:
    """The read-out dict in float32 (autocast may have produced bf16/fp16), without autograd history: the
    ``features`` and, for a method with a cluster head, its soft assignments as ``head``."""
    out = {"features": features.detach().float()}
    if head is not None:
        out["head"] = head.detach().float()
    return out


#: what a support-set neighbour is searched by: the instance embedding (NNCLR) or the image's pixels
NEIGHBOUR_SPACES = ("embedding", "pixels")


class NeighbourPositives(nn.Module):
    """NNCLR's nearest-neighbour positives (Dwibedi et al., ICCV 2021), an option of a two-view instance contrast.

    A support set (:class:`~deepclust.models.support_set.SupportSet`) keeps the ``size`` latest first-view
    embeddings (``dim``). Called with a batch's images and the two views' unit embeddings, the part returns the
    instance loss: NT-Xent while the set fills, and once it is full NNCLR's loss, symmetrised over the views as in
    their code, in which a sample's nearest neighbour in the set stands in for it as the anchor. Then the batch's
    first-view embeddings join the set. ``space`` is what the neighbour is searched by: ``"embedding"`` (each
    view's own embedding, as NNCLR) or ``"pixels"`` (the un-augmented image's centred pixels, pooled to
    ``key_side`` when larger, :func:`~deepclust.models.support_set.pixel_keys` of ``image_shape`` images; both
    views share their image's neighbour). The set is in the state dict, so a resumed run searches the same one.
    """

    def __init__(
        self, size: int, dim: int, space: str, key_side: int, image_shape: tuple[int, int, int]
    ) -> None:
        super().__init__()
        if space not in NEIGHBOUR_SPACES:
            raise ValueError(
                f"neighbours are searched by one of {', '.join(NEIGHBOUR_SPACES)}, got {space!r}"
            )
        self.key_side = key_side
        key_dim = pixel_key_size(image_shape, key_side) if space == "pixels" else None
        self.support_set = SupportSet(size, dim, key_dim)

    def forward(
        self, images: Tensor, z_a: Tensor, z_b: Tensor, temperature: float, gather: bool = False
    ) -> Tensor:
        """The instance loss of the two views' N×D unit embeddings ``z_a`` and ``z_b`` of the uint8 ``images``,
        at ``temperature``; then ``z_a`` (with the images' keys) joins the support set. With ``gather`` the
        negatives are the whole distributed batch's, as in :func:`~deepclust.losses.nt_xent`."""
        support = self.support_set
        keys = pixel_keys(images, self.key_side) if support.keys is not None else None
        if support.full:
            if keys is None:  # in embedding space each view finds its own neighbour
                neighbour_a, neighbour_b = support.nearest(z_a), support.nearest(z_b)
            else:  # both views share their image's pixel neighbour
                neighbour_a = neighbour_b = support.nearest(keys)
            loss = 0.5 * (
                nearest_neighbour_contrast(neighbour_a, z_b, temperature, gather=gather)
                + nearest_neighbour_contrast(neighbour_b, z_a, temperature, gather=gather)
            )
        else:
            loss = nt_xent(z_a, z_b, temperature, gather=gather)
        support.push(z_a, keys)
        return loss


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
