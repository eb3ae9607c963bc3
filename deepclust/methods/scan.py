"""SCAN (Van Gansbeke et al., ECCV 2020), its clustering step: neighbours of a pretext model share a cluster.

The backbone starts from a model trained by another method (``params.pretrained``: a run directory of
``simclr``, ``byol``, ``swav``, ``cc``, ...). Before the first step every sample's ``K`` nearest neighbours are
mined once, by cosine similarity of that backbone's features (or of the centred raw pixels,
``params.neighbour_space=pixels``). Training then draws one neighbour per anchor in every batch and minimises

    Λ = −1/N Σ_i log⟨Φ(X_i), Φ(k_i)⟩  −  λ H(1/N Σ_i Φ(X_i))                       (SCAN Eq. 2)

where ``Φ`` is a linear cluster head with a softmax on the backbone features, trained together with the
backbone. The read-out is the argmax of ``Φ``. With ``params.num_heads > 1`` (the authors' code trains ten),
every head gets its own ``Λ``, their sum is minimised, and the head with the lowest running ``Λ`` is read out
(:class:`~deepclust.models.MultiHead`).
See docs/methods/scan.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from deepclust.data import ArrayDataset
from deepclust.errors import ConfigError, UserError, first_mismatch
from deepclust.evaluation.neighbours import nearest_neighbours, neighbour_accuracy
from deepclust.evaluation.readout import extract
from deepclust.losses import cluster_entropy, neighbour_consistency
from deepclust.methods.base import Batch, Method
from deepclust.methods.common import BackboneMethod
from deepclust.models import MultiHead
from deepclust.models.heads import at_head
from deepclust.validation import check_choice, check_ranges

NEIGHBOUR_SPACES = ("features", "pixels")


@dataclass
class SCANConfig:
    """SCAN hyper-parameters (``params.*``).

    Attributes:
        pretrained: run directory (its ``checkpoints/last.pt``) or checkpoint file of the pretext model whose
            backbone SCAN starts from; its ``model`` settings must equal this run's. ``None`` trains the
            backbone from scratch, which needs ``neighbour_space=pixels``.
        num_neighbours: ``K`` neighbours mined per sample (paper: 20).
        neighbour_space: ``features`` (the pretrained backbone's, as in the paper) or ``pixels`` (the centred
            raw images, a choice for small grayscale images whose pixel neighbours are already good).
        entropy_weight: λ, the weight of the entropy of the mean assignment (paper code: 5.0).
        num_heads: cluster heads trained side by side on the same backbone; the one with the lowest running
            loss is read out (paper: one; code: 10).
        head_loss_momentum: momentum of each head's running loss, the exponential average over training steps
            that picks the read-out head (the code compares the heads' losses on the validation set instead).
    """

    pretrained: str | None = None
    num_neighbours: int = 20
    neighbour_space: str = "features"
    entropy_weight: float = 5.0
    num_heads: int = 1
    head_loss_momentum: float = 0.99


class SCAN(BackboneMethod):
    """SCAN's clustering step: a pretrained backbone, a linear cluster head, neighbour consistency + entropy."""

    Config: ClassVar[type | None] = SCANConfig
    # The paper's clustering step: Adam at 1e-4 with weight decay 1e-4 and a constant rate.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "optim": {
            "name": "adam",
            "lr": 1e-4,
            "weight_decay": 1e-4,
            "schedule": "constant",
            "batch_size": 128,
        },
    }
    primary_readout: ClassVar[str] = "head"
    min_views: ClassVar[int] = 1
    pretrained_setting: ClassVar[str | None] = "params.pretrained"
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.num_neighbours=5",)

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        p = self.params
        check_choice("params.neighbour_space", p.neighbour_space, NEIGHBOUR_SPACES)
        check_ranges(p, "params.", at_least_one=("num_neighbours",), non_negative=("entropy_weight",))
        if p.pretrained is None and p.neighbour_space == "features":
            raise ConfigError(
                "SCAN mines neighbours with a pretrained backbone: set params.pretrained=RUN_DIR "
                "(a finished simclr/byol/swav/cc run), or params.neighbour_space=pixels"
            )
        # Φ, params.num_heads linear heads; the one with the lowest running Λ is read out
        self.cluster_heads = MultiHead(
            lambda: nn.Linear(self.feature_dim, num_clusters), p.num_heads, p.head_loss_momentum
        )
        # N×K mined neighbour indices, kept on the CPU for the data thread; saved through get_extra_state
        self.neighbours = torch.empty(0, p.num_neighbours, dtype=torch.int64)

    def start_from(self, pretrained: Method, source: str) -> None:
        """Copy the pretext model's backbone weights (SCAN Sec. 2.2 starts from them)."""
        weights = getattr(pretrained, "backbone", None)
        if not isinstance(weights, nn.Module):
            raise UserError(f"{source}: the {pretrained.cfg.method} run has no backbone to start from")
        try:
            self.backbone.load_state_dict(weights.state_dict())
        except RuntimeError as err:
            raise UserError(
                f"{source}: its backbone does not match this run's model.* settings ({first_mismatch(err)})"
            ) from None

    def cluster_probs(self, features: Tensor) -> Tensor:
        """``Φ(X) = softmax(W h + b)`` of the read-out head, N×K in float32."""
        return self.cluster_heads.readout(features).float().softmax(dim=1)

    def prepare_training(self, dataset: ArrayDataset, device: torch.device) -> dict[str, Any]:
        """Mine every sample's neighbours (SCAN Sec. 2.1) once, before the first step."""
        if self.params.neighbour_space == "pixels":
            space = dataset.images.reshape(len(dataset), -1).astype(np.float32)
            space -= space.mean(axis=0)
        else:
            space = extract(self, dataset, device)["features"]
        neighbours = nearest_neighbours(space, self.params.num_neighbours)
        self.neighbours = torch.from_numpy(neighbours)
        stats: dict[str, Any] = {
            "neighbours": self.params.num_neighbours,
            "space": self.params.neighbour_space,
        }
        if dataset.labels is not None:
            stats["neighbour_accuracy"] = round(neighbour_accuracy(neighbours, dataset.labels), 4)
        return stats

    def companion_indices(self, indices: Tensor, generator: torch.Generator) -> Tensor:
        """One of each anchor's mined neighbours, drawn uniformly."""
        if len(self.neighbours) == 0:
            raise RuntimeError("SCAN has no mined neighbours: prepare_training must run before training")
        choice = torch.randint(self.neighbours.shape[1], (len(indices),), generator=generator)
        return self.neighbours[indices, choice]

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``Λ`` of SCAN Eq. 2 on a batch of anchors and one neighbour of each (``batch.companions``)."""
        companions = batch.require_companions("SCAN")
        # one augmented view each; anchors and neighbours go through the backbone as one batch
        view = self.prepare(self.augmenter.view(torch.cat([batch.images, companions])))
        features = self.backbone(view)
        consistencies, entropies = [], []
        for head in self.cluster_heads:
            p_anchor, p_neighbour = head(features).float().softmax(dim=1).chunk(2)
            consistencies.append(neighbour_consistency(p_anchor, p_neighbour))
            entropies.append(cluster_entropy(p_anchor, gather=self.gather))
        consistency, entropy = torch.stack(consistencies), torch.stack(entropies)
        head_losses = consistency - self.params.entropy_weight * entropy
        best = self.cluster_heads.update(head_losses)
        return {
            "loss": head_losses.sum(),
            "consistency": at_head(consistency, best),
            "entropy": at_head(entropy, best),
        }

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"neighbours": self.neighbours}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.neighbours = state["neighbours"].cpu()
