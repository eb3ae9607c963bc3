"""ConCURL (Regatti, Deshmukh, Manavoglu, Dogan, "Consensus Clustering With Unsupervised Representation
Learning", IJCNN 2021): BYOL, a SwAV-style soft clustering and a consensus loss over an ensemble of random
transforms, trained end to end on two views of every image with ``α·L1 + β·L2 + γ·L3`` (Eq. 7).

- BYOL (Eq. 1–2): online encoder ``f_θ`` → projector ``g_θ`` → predictor ``h_θ`` (Linear → BN → ReLU → Linear,
  4096 → 256); a target ``f_ξ, g_ξ`` moved by EMA with τ_B = 0.99; ``L1`` the symmetric normalised MSE.
- Soft clustering (Eq. 3–5): a separate MLP ``g`` (2048 → 256) on the same encoder output gives the cluster
  embeddings ``z``; K prototypes ``c`` (L2-normalised every step); ``p = softmax(⟨z̄, c̄⟩/τ)``, τ = 0.1; codes ``q``
  by Sinkhorn-Knopp (ε = 0.05, 3 iterations, float32, all-reduced under DDP); ``L2`` the swapped prediction.
- Consensus (Eq. 6): M random transforms (Gaussian projections with orthogonal rows to d dimensions, or diagonal
  scalings) drawn once at construction into the buffer ``transforms`` (saved in checkpoints, restored by a
  resume); each member's ``p̃`` predicts the other view's codes ``q``; ``L3`` is averaged over the members and
  computed for all of them at once (:mod:`deepclust.losses.consensus`).

A zero weight switches its branch off: its loss is not computed, and modules only it uses are not built (the
``byol`` preset has no ``g`` and no prototypes, the ``soft`` preset no projector, predictor or target). Read-outs:
``codes`` (primary), the argmax of Sinkhorn's codes over the whole evaluation set; ``p``, the argmax of ``p``;
``kmeans`` on the target projection ``v_ξ``. Every epoch starts by logging the mean and standard deviation of
the pairwise NMI between the ensemble members' clusterings of a fixed subsample (Section III-B, Fig. 1;
``benchmarks/concurl_diversity.py`` plots it) and warns when the soft-clustering loss sat at ln K over the
previous epoch (collapsed prototypes). See docs/methods/concurl.md.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from deepclust.data import ArrayDataset
from deepclust.errors import ConfigError
from deepclust.losses import (
    TRANSFORMS,
    byol_loss,
    consensus_loss,
    pairwise_nmi,
    random_transforms,
    sinkhorn,
    swav_loss,
    transformed_scores,
)
from deepclust.methods.base import Batch, TrainingProgress
from deepclust.methods.common import BackboneMethod, readout_outputs
from deepclust.models import Prototypes, mlp
from deepclust.models.ema import cosine_momentum, ema_update_, frozen_copy
from deepclust.validation import check_choice, check_ranges

#: named (α, β, γ) of Eq. 7: the method and the rows of the paper's Table IV
WEIGHT_PRESETS: dict[str, tuple[float, float, float]] = {
    "concurl": (1.0, 1.0, 1.0),
    "byol": (1.0, 0.0, 0.0),
    "soft": (0.0, 1.0, 0.0),
    "byol+soft": (1.0, 1.0, 0.0),
}
#: what the ``kmeans`` read-out clusters: the target projection v_ξ (the paper), the online backbone features,
#: or the cluster embedding z
REPRESENTATIONS = ("target_projection", "backbone", "cluster_embedding")
#: the EMA momentum: τ_B fixed (the paper) or BYOL's cosine schedule from τ_B to 1
MOMENTUM_SCHEDULES = ("constant", "cosine")
#: the smallest probability whose logarithm the ``codes`` read-out takes (p in float32 never gets this small at
#: τ ≥ 0.025, where |s|/τ ≤ 40)
PROB_FLOOR = 1e-30
#: a seed offset for the transforms' generator, so that they do not repeat any draw seeded by the run's seed
TRANSFORM_SEED_OFFSET = 7_919


@dataclass
class ConCURLConfig:
    """ConCURL hyper-parameters (``params.*``), by the paper's equation.

    Attributes:
        weights: a named (α, β, γ) of Eq. 7: ``concurl`` (1, 1, 1), and Table IV's ``byol`` (1, 0, 0),
            ``soft`` (0, 1, 0) and ``byol+soft`` (1, 1, 0). A weight of 0 switches its loss off entirely.
        byol_weight: α of Eq. 7 (the BYOL loss L1), when set, instead of the preset's.
        soft_weight: β of Eq. 7 (the soft-clustering loss L2), when set, instead of the preset's.
        consensus_weight: γ of Eq. 7 (the consensus loss L3), when set, instead of the preset's.
        projection_dim: output size of BYOL's projector g_θ and predictor h_θ, Eq. 1 (paper: 256).
        hidden_dim: hidden width of the projector and the predictor, Eq. 1 (paper: 4096).
        base_momentum: τ_B of the target's EMA ξ ← τ_B ξ + (1 − τ_B) θ under Eq. 2 (paper: 0.99).
        momentum_schedule: ``constant`` τ_B (the paper) or ``cosine``, BYOL's schedule from τ_B to 1.
        cluster_dim: d of the cluster embeddings z and the prototypes c, Eq. 3 (paper: 256).
        cluster_hidden_dim: hidden width of the cluster MLP g, Linear → BN → ReLU → Linear, Eq. 3 (paper: 2048).
        num_prototypes: K of Eq. 3–4; ``None`` = the run's number of clusters. More prototypes than classes is
            the paper's "upper bound on the number of clusters" (the ``kmeans`` read-out is then the primary).
        temperature: τ of the softmax of Eq. 3 (paper: 0.1).
        epsilon: ε of the entropic term of Eq. 4 (paper: 0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations solving Eq. 4 (SwAV: 3), in training and for the
            ``codes`` read-out.
        num_transforms: M, the ensemble size of Eq. 6 (Table V: 10, 30, 50, 100; 100 the best).
        transform: the transforms of Section IV-A.3: ``orthogonal`` (Gaussian random projections with orthogonal
            rows, the paper), ``gaussian`` (the plain Gaussian matrix of the authors' code) or ``diagonal``
            (diagonal scalings).
        transform_dim: the dimension d of the random projections (Table V: 32–512; 64 the best); unused by
            ``diagonal``.
        consensus_temperature: τ of the softmax in the transformed spaces, Eq. 6; ``None`` = ``temperature``.
        consensus_prototype_grad: whether Eq. 6 sends gradient to the prototypes (the paper's c̃ = Ac); the
            authors' later code transforms a detached copy (``false``).
        representation: what the ``kmeans`` read-out clusters: ``target_projection`` (v_ξ, the paper's BYOL
            read-out), ``backbone`` (the online encoder output) or ``cluster_embedding`` (z). Without the BYOL
            branch (α = 0) there is no target, and ``target_projection`` reads the backbone.
        diversity_samples: the size of the fixed subsample on which the ensemble's pairwise NMI is logged every
            epoch (Section III-B); 0 = not logged.
        collapse_tolerance: the epoch's mean soft-clustering loss within this share of ln K warns of collapsed
            prototypes (Section IV-D).
    """

    weights: str = "concurl"
    byol_weight: float | None = None
    soft_weight: float | None = None
    consensus_weight: float | None = None
    projection_dim: int = 256
    hidden_dim: int = 4096
    base_momentum: float = 0.99
    momentum_schedule: str = "constant"
    cluster_dim: int = 256
    cluster_hidden_dim: int = 2048
    num_prototypes: int | None = None
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    num_transforms: int = 100
    transform: str = "orthogonal"
    transform_dim: int = 64
    consensus_temperature: float | None = None
    consensus_prototype_grad: bool = True
    representation: str = "target_projection"
    diversity_samples: int = 1000
    collapse_tolerance: float = 0.01


def loss_weights(params: ConCURLConfig) -> tuple[float, float, float]:
    """The (α, β, γ) of Eq. 7: the ``weights`` preset's, with each weight that is set explicitly instead."""
    preset = WEIGHT_PRESETS[params.weights]
    explicit = (params.byol_weight, params.soft_weight, params.consensus_weight)
    alpha, beta, gamma = (
        float(default if value is None else value) for value, default in zip(explicit, preset, strict=True)
    )
    return alpha, beta, gamma


class ConCURL(BackboneMethod):
    """ConCURL: BYOL + soft clustering (Sinkhorn codes, swapped prediction) + the consensus of M transforms."""

    Config: ClassVar[type | None] = ConCURLConfig
    # Section IV-A.1: Adam at 5e-4 for every dataset (no weight decay or schedule is given); the views of the
    # authors' released runs (the `concurl` preset); the shipped configs set Section IV-A.2's instead.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "optim": {"name": "adam", "lr": 5e-4, "weight_decay": 0.0, "schedule": "constant"},
        "augment": {"pipeline": "concurl"},
    }
    #: "codes" with K prototypes and a clustering branch; "kmeans" otherwise (set per instance)
    primary_readout: ClassVar[str] = "codes"
    tiny_settings: ClassVar[tuple[str, ...] | None] = (
        "params.projection_dim=8",
        "params.hidden_dim=16",
        "params.cluster_dim=8",
        "params.cluster_hidden_dim=16",
        "params.num_transforms=8",
        "params.transform_dim=4",
        "params.diversity_samples=256",
    )

    transforms: Tensor

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.weights", p.weights, tuple(WEIGHT_PRESETS))
        check_choice("params.transform", p.transform, TRANSFORMS)
        check_choice("params.representation", p.representation, REPRESENTATIONS)
        check_choice("params.momentum_schedule", p.momentum_schedule, MOMENTUM_SCHEDULES)
        check_ranges(
            p,
            "params.",
            positive=("temperature", "epsilon", "consensus_temperature"),
            at_least_one=(
                "projection_dim",
                "hidden_dim",
                "cluster_dim",
                "cluster_hidden_dim",
                "sinkhorn_iterations",
                "num_transforms",
                "transform_dim",
            ),
            non_negative=(
                "byol_weight",
                "soft_weight",
                "consensus_weight",
                "diversity_samples",
                "collapse_tolerance",
            ),
            fraction=("base_momentum",),
        )
        self.loss_weights = loss_weights(p)
        alpha, beta, gamma = self.loss_weights
        if not any(self.loss_weights):
            raise ConfigError(
                f"params: the loss weights (α, β, γ) of preset {p.weights!r} and its overrides are all 0; "
                "nothing would be trained"
            )
        self.num_prototypes = num_clusters if p.num_prototypes is None else int(p.num_prototypes)
        if self.num_prototypes < 2:
            raise ConfigError(f"params.num_prototypes must be at least 2, got {self.num_prototypes}")
        self.consensus_temperature = float(p.consensus_temperature or p.temperature)
        # BYOL (Eq. 1–2): built only when it is weighted in, so that no parameter goes unused under DDP
        self.projector: nn.Module | None = None
        self.predictor: nn.Module | None = None
        self.target: nn.Module | None = None
        if alpha > 0:
            self.projector = mlp(
                self.feature_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=True
            )
            self.predictor = mlp(
                p.projection_dim, p.hidden_dim, p.projection_dim, num_layers=2, batch_norm=True
            )
            # the target starts as an exact copy of the online encoder and projector, and moves only by EMA
            self.target = frozen_copy(nn.Sequential(self.backbone, self.projector))
        self.momentum = float(p.base_momentum)
        # Soft clustering and consensus (Eq. 3–6): the cluster MLP g and the prototypes, and the M transforms
        self.cluster_head: nn.Module | None = None
        self.prototypes: Prototypes | None = None
        if beta > 0 or gamma > 0:
            self.cluster_head = mlp(
                self.feature_dim, p.cluster_hidden_dim, p.cluster_dim, num_layers=2, batch_norm=True
            )
            self.prototypes = Prototypes(p.cluster_dim, self.num_prototypes)
            # Drawn once, from a generator of their own seeded by the run's seed: the same on every process and
            # for every preset, and a buffer, so a checkpoint holds them and a resume restores them.
            generator = torch.Generator().manual_seed(int(cfg.seed) + TRANSFORM_SEED_OFFSET)
            self.register_buffer(
                "transforms",
                random_transforms(p.num_transforms, p.cluster_dim, p.transform_dim, p.transform, generator),
            )
        if self.prototypes is None or self.num_prototypes != num_clusters:
            self.primary_readout = "kmeans"
        # the soft-clustering loss summed over the epoch on the device (read once per epoch: no wait per step)
        self._soft_loss_sum: Tensor | None = None
        self._soft_loss_steps = 0
        self._diversity_indices: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------- training
    def _online_encoder(self) -> nn.Sequential:
        """``g_θ ∘ f_θ`` as one module (built on the fly: registering it would duplicate state-dict keys)."""
        assert self.projector is not None
        return nn.Sequential(self.backbone, self.projector)

    def cluster_scores(self, z: Tensor) -> Tensor:
        """The cosines ``⟨z̄, c̄⟩`` of cluster embeddings with the unit prototypes (Eq. 3's logits times τ), in
        float32 outside autocast: Sinkhorn's ``s/ε`` needs the precision, and the product is small."""
        assert self.prototypes is not None
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.prototypes(z.float())

    def ensemble_scores(self, z: Tensor) -> Tensor:
        """The M members' scores ``⟨A z / ‖A z‖, A c̄ / ‖A c̄‖⟩`` (Section II-C), M×N×K in float32; the prototypes
        get gradient through them unless ``params.consensus_prototype_grad`` is off."""
        assert self.prototypes is not None
        with torch.autocast(device_type=z.device.type, enabled=False):
            prototypes = F.normalize(self.prototypes.weight.float(), dim=1)
            if not self.params.consensus_prototype_grad:
                prototypes = prototypes.detach()
            return transformed_scores(z.float(), prototypes, self.transforms.float())

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``α·L1 + β·L2 + γ·L3`` (Eq. 7); the unweighted terms of the weighted branches beside the total."""
        p = self.params
        alpha, beta, gamma = self.loss_weights
        view_1, view_2 = self.views(batch.images)[:2]
        # each view through the networks separately: BatchNorm statistics per view (BYOL's and the authors' code)
        h_1, h_2 = self.backbone(view_1), self.backbone(view_2)
        losses: dict[str, Tensor] = {}
        total: Tensor | None = None
        if alpha > 0:
            assert self.projector is not None and self.predictor is not None and self.target is not None
            prediction_1 = self.predictor(self.projector(h_1))
            prediction_2 = self.predictor(self.projector(h_2))
            with torch.no_grad():
                target_1, target_2 = self.target(view_1), self.target(view_2)
            losses["byol"] = byol_loss(prediction_1, target_2) + byol_loss(prediction_2, target_1)  # Eq. 1–2
            total = alpha * losses["byol"]
        if beta > 0 or gamma > 0:
            assert self.cluster_head is not None
            z_1, z_2 = self.cluster_head(h_1), self.cluster_head(h_2)
            scores_1, scores_2 = self.cluster_scores(z_1), self.cluster_scores(z_2)
            # Eq. 4 per view, over the global batch under DDP; float32 and max-subtracted inside sinkhorn
            codes_1 = sinkhorn(scores_1, p.epsilon, p.sinkhorn_iterations, distributed=self.gather)
            codes_2 = sinkhorn(scores_2, p.epsilon, p.sinkhorn_iterations, distributed=self.gather)
            if beta > 0:
                losses["soft"] = swav_loss([scores_1, scores_2], [codes_1, codes_2], p.temperature)  # Eq. 5
                self._track_soft_loss(losses["soft"])
                total = beta * losses["soft"] if total is None else total + beta * losses["soft"]
            if gamma > 0:
                ensemble = self.ensemble_scores(torch.cat([z_1, z_2]))  # M×2B×K: both views in one product
                ensemble_1, ensemble_2 = ensemble.chunk(2, dim=1)
                losses["consensus"] = consensus_loss(  # Eq. 6
                    ensemble_1, ensemble_2, codes_1, codes_2, self.consensus_temperature
                )
                total = gamma * losses["consensus"] if total is None else total + gamma * losses["consensus"]
        assert total is not None
        return {"loss": total, **losses}

    def _track_soft_loss(self, loss: Tensor) -> None:
        """Add this step's soft-clustering loss to the epoch's sum, on the device."""
        value = loss.detach().float()
        self._soft_loss_sum = value if self._soft_loss_sum is None else self._soft_loss_sum + value
        self._soft_loss_steps += 1

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """The target's EMA update (τ_B, or its cosine schedule) and the prototypes' renormalisation."""
        if self.target is not None:
            if self.params.momentum_schedule == "cosine":
                self.momentum = cosine_momentum(progress.fraction, self.params.base_momentum)
            ema_update_(self.target, self._online_encoder(), self.momentum)
        if self.prototypes is not None:
            self.prototypes.normalize_()

    # ------------------------------------------------------------------------------- diversity, collapse
    def on_epoch_start(self, dataset: ArrayDataset, device: torch.device, epoch: int) -> dict[str, Any]:
        """The ensemble's diversity (Section III-B): the mean and standard deviation of the pairwise NMI between
        the M members' clusterings of a fixed subsample; and a warning when the soft-clustering loss averaged
        ln K over the previous epoch."""
        self._warn_if_collapsed(epoch)
        if self.prototypes is None or self.params.diversity_samples == 0 or self.transforms.shape[0] < 2:
            return {}
        nmi = pairwise_nmi(self.ensemble_assignments(dataset, device))
        return {
            "ensemble_nmi_mean": round(float(nmi.mean()), 6),
            "ensemble_nmi_std": round(float(nmi.std(unbiased=False)), 6),
        }

    def _warn_if_collapsed(self, epoch: int) -> None:
        """Warn when the last epoch's mean soft-clustering loss sits at ln K (SwAV's sign of collapse, which the
        paper met with the soft loss alone); then start the next epoch's sum."""
        steps, total = self._soft_loss_steps, self._soft_loss_sum
        self._soft_loss_sum, self._soft_loss_steps = None, 0
        if epoch < 1 or steps == 0 or total is None:
            return
        mean = float(total) / steps
        log_k = math.log(self.num_prototypes)
        if abs(mean - log_k) <= self.params.collapse_tolerance * log_k:
            warnings.warn(
                f"concurl: the soft-clustering loss averaged {mean:.4f} over epoch {epoch - 1}, at ln K = "
                f"{log_k:.4f}: the prototypes have collapsed (every sample's p is uniform). Weighting the BYOL and "
                "consensus losses in, a lower params.epsilon or a lower learning rate may help "
                "(docs/methods/concurl.md)",
                stacklevel=2,
            )

    def diversity_indices(self, size: int) -> np.ndarray:
        """The fixed subsample of ``params.diversity_samples`` dataset indices (sorted), drawn from the run's
        seed; the same every epoch and after a resume."""
        if self._diversity_indices is None or self._diversity_indices.size > size:
            count = min(int(self.params.diversity_samples), size)
            rng = np.random.default_rng(int(self.cfg.seed))
            self._diversity_indices = np.sort(rng.choice(size, size=count, replace=False))
        return self._diversity_indices

    @torch.no_grad()
    def ensemble_assignments(self, dataset: ArrayDataset, device: torch.device) -> Tensor:
        """Each member's clustering (argmax of ``p̃``) of the evaluation views of the fixed subsample, M×n, with
        the network in evaluation mode (BatchNorm on its running statistics, which this pass leaves alone)."""
        indices = self.diversity_indices(len(dataset))
        batch_size = int(self.cfg.optim.batch_size)
        was_training = self.training
        self.eval()
        parts = []
        try:
            for start in range(0, indices.size, batch_size):
                # a copy: the dataset's arrays are read-only (and may be a memory map)
                images = torch.from_numpy(np.array(dataset.images[indices[start : start + batch_size]]))
                parts.append(self._cluster_embedding(images.to(device)))
        finally:
            self.train(was_training)
        return self.ensemble_scores(torch.cat(parts)).argmax(dim=-1)

    # -------------------------------------------------------------------------------------------- read-out
    def _cluster_embedding(self, images: Tensor) -> Tensor:
        """The cluster embedding z of the evaluation view of uint8 ``images``."""
        assert self.cluster_head is not None
        return self.cluster_head(self.backbone(self.prepare(self.augmenter.eval_view(images))))

    def cluster_probs(self, features: Tensor) -> Tensor | None:
        """``p = softmax(⟨z̄, c̄⟩ / τ)`` (Eq. 3) of backbone features, N×K in float32; ``None`` without prototypes."""
        if self.cluster_head is None:
            return None
        return torch.softmax(
            self.cluster_scores(self.cluster_head(features)) / self.params.temperature, dim=1
        )

    @torch.no_grad()
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        """``features`` (k-means): the target projection ``v_ξ`` of the evaluation view (``params.representation``);
        ``p``: its soft assignments of Eq. 3, whose argmax is one read-out and from which
        :meth:`dataset_readouts` computes the codes."""
        view = self.prepare(self.augmenter.eval_view(images))
        h = self.backbone(view)
        representation = self.params.representation
        if representation == "cluster_embedding" and self.cluster_head is not None:
            features = self.cluster_head(h)
        elif representation == "target_projection" and self.target is not None:
            features = self.target(view)
        else:
            features = h
        out = readout_outputs(features)
        probs = self.cluster_probs(h)
        if probs is not None:
            out["p"] = probs.detach().float()
        return out

    def dataset_readouts(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``codes``: the argmax of the Sinkhorn codes of Eq. 4 over the whole evaluation set (the paper's read-out,
        "we compute the cluster assignments using the computed codes").

        The scores are recovered from ``p``: ``τ·log p = ⟨z̄, c̄⟩ − τ·logsumexp``, the scores up to a constant per
        sample, which Sinkhorn's rescaling of every sample absorbs, so the codes are those of the scores
        themselves (exactly while p does not underflow; it is floored at 1e-30)."""
        probs = outputs.get("p")
        if probs is None:
            return {}
        scores = self.params.temperature * np.log(np.maximum(probs.astype(np.float64), PROB_FLOOR))
        codes = sinkhorn(torch.from_numpy(scores), self.params.epsilon, self.params.sinkhorn_iterations)
        return {"codes": codes.argmax(dim=1).numpy()}
