"""SIC (Sundareswaran et al., "Cluster Analysis with Deep Embeddings and Contrastive Learning"): instance
contrast, a DEC cluster head and an anchor loss, trained end to end on three views of every image.

Views: ``x0``, the raw image (only resized and converted: :meth:`ViewAugmenter.eval_view`), and ``x1``, ``x2``,
two views of CC's augmentation. Each goes through the backbone ``f`` separately (BatchNorm per view, as the
authors' code). The loss is ``α·L_Instance + β·L_Cluster + γ·L_Anchor`` (the paper's Eq. 10, its display
equations counted in order, as in :mod:`deepclust.losses.dec`):

- ``L_Instance``: NT-Xent at τ = 0.5 over ``z = g_I(h1), g_I(h2)``, ``g_I`` a 2-layer MLP to 128 (Eq. 1–3);
  the code's denominator without the self-similarity, or the paper's printed one with it;
- ``L_Cluster = KL[p‖q0]``: ``q0`` the Student-t assignment of the raw view to K learnable centres μ (Eq. 4),
  ``p`` DEC's target computed from the batch and detached (Eq. 5–7);
- ``L_Anchor = KL[q0‖q1] + KL[q0‖q2]``, ``q1``, ``q2`` the augmented views' assignments, ``q0`` detached as
  in the code (Eq. 8–9); the other anchor functions of the paper's Table 5 are options.

The centres are a parameter in the backbone feature space ``h`` (the authors' code; ``params.centre_space``),
initialised by k-means over the raw views of the whole training set in :meth:`SIC.prepare_training`; a resumed
run restores them with the other weights. Read-outs: ``head``, the argmax of the raw view's Student-t
assignment (the paper's "Cluster" row, the primary one), and ``kmeans`` on the instance head's L2-normalised
output (its "Representation" row). Every epoch starts by logging the mean pairwise distance between the centres
(the paper's Fig. 2; ``benchmarks/sic_centre_distance.py`` plots it). See docs/methods/sic.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from deepclust.data import ArrayDataset
from deepclust.distributed import broadcast_
from deepclust.errors import ConfigError
from deepclust.evaluation.kmeans import kmeans
from deepclust.evaluation.metrics import evaluate_clustering
from deepclust.losses import (
    anchor_loss,
    dec_target,
    jensen_shannon,
    kl_divergence,
    nt_xent,
    student_t_assignment,
)
from deepclust.methods.base import Batch
from deepclust.methods.common import BackboneMethod, readout_outputs
from deepclust.models import mlp
from deepclust.validation import check_choice, check_ranges

#: named (α, β, γ) loss weights: the paper's, the authors' code's, and the first two rows of the paper's
#: Table 4 (its third row is "paper")
WEIGHT_PRESETS: dict[str, tuple[float, float, float]] = {
    "paper": (20.0, 0.1, 0.1),
    "code": (1.0, 1.0, 1.0),
    "instance": (20.0, 0.0, 0.0),
    "instance_cluster": (20.0, 0.1, 0.0),
}
#: the inputs (x0, x1, x2) of the paper's Table 3: x + T(x) + T(x), x + x + x, T(x) + T(x) + T(x)
INPUTS = ("raw_augmented", "raw", "augmented")
#: the anchor functions of the paper's Table 5: KL[q0‖q1] + KL[q0‖q2] (the method), KL[p0‖q1] + KL[p0‖q2],
#: KL[p1‖q2] + KL[p2‖q1], JSD[q1‖q2]
ANCHORS = ("kl_q0", "kl_p0", "kl_p_swap", "jsd")
#: where the centres live: the backbone features h (the code) or the L2-normalised instance embedding z
CENTRE_SPACES = ("features", "instance")
#: what the k-means read-out clusters: the instance head's embedding (the paper) or the backbone features (code)
REPRESENTATIONS = ("instance", "features")
#: the NT-Xent denominator: without the self-similarity (the code) or with it (the paper as printed)
INSTANCE_DENOMINATORS = ("code", "paper")


@dataclass
class SICConfig:
    """SIC hyper-parameters (``params.*``); equation numbers count the paper's display equations in order.

    Attributes:
        instance_dim: output size of ``g_I``, the ``z`` of Eq. 1–2 (paper and code: 128).
        hidden_dim: hidden width of ``g_I``; ``None`` = the backbone's feature size (code: 512, ResNet34).
        instance_temperature: ``τ`` of the instance loss, Eq. 1 (paper: 0.5).
        instance_denominator: the sum under Eq. 1: ``code`` leaves out the anchor's similarity with itself (the
            authors' code, CC's ``InstanceLoss``), ``paper`` keeps the ``j = i`` term as printed.
        centre_space: the space of the centres μ and the embedding ``h_i`` of Eq. 4: ``features``, the
            backbone's output (the code and Algorithm 1), or ``instance``, the L2-normalised ``g_I`` output.
        degrees_of_freedom: ``α`` of the Student-t kernel, Eq. 4 (paper: 1).
        detach_anchor: stop the gradient through ``q0`` in the anchor loss, Eq. 8 (the code: true).
        anchor: the anchor function, Eq. 8 and Table 5: ``kl_q0`` (KL[q0‖q1] + KL[q0‖q2], the method),
            ``kl_p0`` (KL[p0‖q1] + KL[p0‖q2]), ``kl_p_swap`` (KL[p1‖q2] + KL[p2‖q1]) or ``jsd`` (JSD[q1‖q2]).
        inputs: the views (x0, x1, x2) of Algorithm 1 and Table 3: ``raw_augmented`` (x, T(x), T(x), the
            method), ``raw`` (x, x, x) or ``augmented`` (T(x), T(x), T(x)).
        weights: a named set of the weights (α, β, γ) of Eq. 10: ``paper`` (20, 0.1, 0.1), ``code`` (1, 1, 1),
            and Table 4's ablations ``instance`` (20, 0, 0) and ``instance_cluster`` (20, 0.1, 0).
        instance_weight: ``α`` of Eq. 10, when set, instead of the preset's.
        cluster_weight: ``β`` of Eq. 10, when set, instead of the preset's.
        anchor_weight: ``γ`` of Eq. 10, when set, instead of the preset's.
        representation: what the ``kmeans`` read-out clusters: ``instance``, ``g_I``'s L2-normalised output
            (the paper's "Representation" row), or ``features``, the backbone's ``h`` (what the code clusters).
    """

    instance_dim: int = 128
    hidden_dim: int | None = None
    instance_temperature: float = 0.5
    instance_denominator: str = "code"
    centre_space: str = "features"
    degrees_of_freedom: float = 1.0
    detach_anchor: bool = True
    anchor: str = "kl_q0"
    inputs: str = "raw_augmented"
    weights: str = "paper"
    instance_weight: float | None = None
    cluster_weight: float | None = None
    anchor_weight: float | None = None
    representation: str = "instance"


def loss_weights(params: SICConfig) -> tuple[float, float, float]:
    """The (α, β, γ) of Eq. 10: the ``weights`` preset's, with each weight that is set explicitly instead."""
    preset = WEIGHT_PRESETS[params.weights]
    explicit = (params.instance_weight, params.cluster_weight, params.anchor_weight)
    alpha, beta, gamma = (
        float(default if value is None else value) for value, default in zip(explicit, preset, strict=True)
    )
    return alpha, beta, gamma


def mean_centre_distance(centres: Tensor) -> float:
    """The mean Euclidean distance over the K(K−1)/2 pairs of centres (the paper's Fig. 2)."""
    if centres.shape[0] < 2:
        return 0.0
    return float(torch.pdist(centres.detach().float()).mean())


class SIC(BackboneMethod):
    """SIC: backbone, instance head (NT-Xent), Student-t cluster centres (DEC) and the anchor loss."""

    Config: ClassVar[type | None] = SICConfig
    # The authors' config/config.yaml: Adam at 3e-4 without weight decay or schedule; CC's augmentation,
    # whose pipeline has no Normalize (modules/transform_sic.py), so the raw view is the resized [0, 1] image.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "optim": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0, "schedule": "constant"},
        "augment": {"pipeline": "cc"},
    }
    primary_readout: ClassVar[str] = "head"
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.instance_dim=8", "params.hidden_dim=16")

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.weights", p.weights, tuple(WEIGHT_PRESETS))
        check_choice("params.inputs", p.inputs, INPUTS)
        check_choice("params.anchor", p.anchor, ANCHORS)
        check_choice("params.centre_space", p.centre_space, CENTRE_SPACES)
        check_choice("params.representation", p.representation, REPRESENTATIONS)
        check_choice("params.instance_denominator", p.instance_denominator, INSTANCE_DENOMINATORS)
        check_ranges(
            p,
            "params.",
            positive=("instance_temperature", "degrees_of_freedom"),
            at_least_one=("instance_dim", "hidden_dim"),
            non_negative=("instance_weight", "cluster_weight", "anchor_weight"),
        )
        self.loss_weights = loss_weights(p)
        if not any(self.loss_weights):
            raise ConfigError(
                f"params: the loss weights (α, β, γ) of preset {p.weights!r} and its overrides are all 0; "
                "nothing would be trained"
            )
        hidden = p.hidden_dim or self.feature_dim
        # g_I: Linear → ReLU → Linear(128), no BatchNorm (modules/network_sic.py), L2-normalised after
        self.instance_head = mlp(self.feature_dim, hidden, p.instance_dim, num_layers=2, batch_norm=False)
        centre_dim = self.feature_dim if p.centre_space == "features" else p.instance_dim
        # μ: K centres, replaced by k-means in prepare_training; a random start only until then
        self.centres = nn.Parameter(torch.randn(num_clusters, centre_dim))
        # Table 4's "Instance" row: without β and γ the raw view and the centres take no part in the loss
        if not self.clustering:
            self.centres.requires_grad_(False)

    @property
    def clustering(self) -> bool:
        """Whether the cluster or the anchor loss is weighted in (the raw view and the centres are then used)."""
        _, beta, gamma = self.loss_weights
        return beta > 0 or gamma > 0

    def embed(self, h: Tensor) -> Tensor:
        """The L2-normalised instance embedding ``z = g_I(h) / ‖g_I(h)‖`` of backbone features."""
        return F.normalize(self.instance_head(h), dim=1)

    def centre_space(self, h: Tensor, z: Tensor | None = None) -> Tensor:
        """Where the centres live: the backbone features ``h`` or the embedding ``z`` (computed when not given)."""
        if self.params.centre_space == "features":
            return h
        return z if z is not None else self.embed(h)

    def assign(self, embedding: Tensor) -> Tensor:
        """The Student-t soft assignments ``q`` (Eq. 4) of centre-space embeddings, N×K in float32."""
        return student_t_assignment(embedding, self.centres, self.params.degrees_of_freedom)

    def _raw_view(self, images: Tensor) -> Tensor:
        """``x0`` of the chosen inputs: the raw image, or for ``augmented`` another draw of the first view."""
        if self.params.inputs == "augmented":
            return self.prepare(self.augmenter.view(images, 0))
        return self.prepare(self.augmenter.eval_view(images))

    # ------------------------------------------------------------------------------------------- training
    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``α·L_Instance + β·L_Cluster + γ·L_Anchor`` (Eq. 10); the unweighted terms beside the total."""
        p = self.params
        images = batch.images
        alpha, beta, gamma = self.loss_weights
        gather = self.gather
        clustering = self.clustering
        h0: Tensor | None = None
        if p.inputs == "raw":  # Table 3's x + x + x: one deterministic view, one backbone pass
            h0 = self.backbone(self._raw_view(images))
            h1 = h2 = h0
        else:
            view_1, view_2 = self.views(images)[:2]
            h1, h2 = self.backbone(view_1), self.backbone(view_2)
            if clustering:
                h0 = self.backbone(self._raw_view(images))
        z1, z2 = self.embed(h1), self.embed(h2)
        include_self = p.instance_denominator == "paper"
        instance = nt_xent(z1, z2, p.instance_temperature, gather=gather, include_self=include_self)
        if not clustering or h0 is None:
            return {"loss": alpha * instance, "instance": instance}
        q0 = self.assign(self.centre_space(h0, z1 if p.inputs == "raw" else None))
        q1 = self.assign(self.centre_space(h1, z1))
        q2 = self.assign(self.centre_space(h2, z2))
        # p from the (global) batch, detached (Eq. 5); KL[p‖q0] averaged over the batch (Eq. 6–7)
        target = dec_target(q0, distributed=gather)
        cluster = kl_divergence(target, q0)
        anchor = self._anchor(q0, q1, q2, target, gather)
        return {
            "loss": alpha * instance + beta * cluster + gamma * anchor,
            "instance": instance,
            "cluster": cluster,
            "anchor": anchor,
        }

    def _anchor(self, q0: Tensor, q1: Tensor, q2: Tensor, p0: Tensor, gather: bool) -> Tensor:
        """The anchor function ``params.anchor`` (Eq. 8 and the alternatives of Table 5)."""
        name = self.params.anchor
        if name == "kl_q0":
            return anchor_loss(q0, q1, q2, detach_anchor=self.params.detach_anchor)
        if name == "kl_p0":
            return kl_divergence(p0, q1) + kl_divergence(p0, q2)
        if name == "kl_p_swap":
            p1, p2 = dec_target(q1, distributed=gather), dec_target(q2, distributed=gather)
            return kl_divergence(p1, q2) + kl_divergence(p2, q1)
        return jensen_shannon(q1, q2)

    # ------------------------------------------------------------------------------------- centres, hooks
    @torch.no_grad()
    def raw_view_embeddings(self, dataset: ArrayDataset, device: torch.device) -> np.ndarray:
        """Centre-space embeddings of every image's raw view, N×D in dataset order.

        As the authors' ``get_kmeans_center``, the network runs in training mode: BatchNorm normalises with
        each batch's statistics (the ones the training steps' ``q0`` sees; a fresh network's running statistics
        are still 0 and 1) and updates its running statistics on the way. The batches are the training batch
        size, split evenly so that no batch is a single image.
        """
        was_training = self.training
        self.train()
        batch_size = int(self.cfg.optim.batch_size)
        parts = []
        try:
            chunks = np.array_split(np.arange(len(dataset)), max(1, -(-len(dataset) // batch_size)))
            for chunk in chunks:
                # a copy: the dataset's arrays are read-only (and may be a memory map)
                images = torch.from_numpy(np.array(dataset.images[chunk[0] : chunk[-1] + 1]))
                view = self.prepare(self.augmenter.eval_view(images.to(device)))
                parts.append(self.centre_space(self.backbone(view)).float().cpu().numpy())
        finally:
            self.train(was_training)
        return np.concatenate(parts)

    def prepare_training(self, dataset: ArrayDataset, device: torch.device) -> dict[str, Any]:
        """The centres: k-means (``K = self.num_clusters``, the run's ``kmeans`` settings and seed) on the
        raw-view embeddings of the whole training set, before the first step (Algorithm 1's initial μ).

        Not run on a resume: the centres are parameters, restored from the checkpoint. Every process computes
        the same centres from the same weights; rank 0's are broadcast to make sure of it.
        """
        embeddings = self.raw_view_embeddings(dataset, device)
        settings = self.cfg.kmeans
        result = kmeans(
            embeddings,
            self.num_clusters,
            n_init=settings.n_init,
            max_iter=settings.max_iter,
            seed=self.cfg.seed,
            backend=settings.backend,
        )
        centres = torch.from_numpy(result.centroids).to(device=self.centres.device, dtype=self.centres.dtype)
        with torch.no_grad():
            self.centres.copy_(broadcast_(centres))
        stats: dict[str, Any] = {
            "centres": f"k-means on {len(embeddings)} raw views in the {self.params.centre_space} space",
            "centre_distance": round(mean_centre_distance(self.centres), 6),
        }
        if dataset.labels is not None:
            stats["kmeans_acc"] = round(evaluate_clustering(dataset.labels, result.labels)["acc"], 4)
        return stats

    def on_epoch_start(self, dataset: ArrayDataset, device: torch.device, epoch: int) -> dict[str, Any]:
        """The mean pairwise distance between the centres, logged every epoch (the paper's Fig. 2)."""
        return {"centre_distance": round(mean_centre_distance(self.centres), 6)}

    # -------------------------------------------------------------------------------------------- read-out
    @torch.no_grad()
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        """``features``: the raw view's instance embedding (or backbone features, ``params.representation``),
        clustered by k-means; ``head``: its Student-t assignment, whose argmax is the cluster."""
        h = self.backbone(self.prepare(self.augmenter.eval_view(images)))
        z = self.embed(h)
        features = z if self.params.representation == "instance" else h
        return readout_outputs(features, self.assign(self.centre_space(h, z)))
