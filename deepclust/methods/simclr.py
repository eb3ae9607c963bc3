"""SimCLR (Chen et al., ICML 2020): contrast two augmented views of every image with NT-Xent.

``h = f(x)`` (backbone), ``z = g(h)`` (projector: Linear → BN → ReLU → Linear), loss NT-Xent on ``z`` (the
loss normalises ``z``). Both views go through the backbone as one concatenated batch, as in the authors'
code, so BatchNorm sees 2N samples. Clustering reads out k-means on ``h``. See docs/methods/simclr.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from deepclust.losses import nt_xent
from deepclust.methods.base import Batch
from deepclust.methods.common import BackboneMethod
from deepclust.models import mlp
from deepclust.validation import check_ranges


@dataclass
class SimCLRConfig:
    """SimCLR hyper-parameters (``params.*``).

    Attributes:
        projection_dim: output size of the projector ``g`` (paper: 128).
        hidden_dim: hidden width of ``g``; ``None`` = the backbone's feature size (paper: 2048 for ResNet-50).
        temperature: τ of NT-Xent (paper §5.1: 0.5 is best at small batch sizes and on CIFAR-10).
    """

    projection_dim: int = 128
    hidden_dim: int | None = None
    temperature: float = 0.5


class SimCLR(BackboneMethod):
    """SimCLR: backbone + 2-layer MLP projector, NT-Xent between the two views of each image."""

    Config: ClassVar[type | None] = SimCLRConfig
    DEFAULTS: ClassVar[dict[str, Any]] = {"augment": {"pipeline": "simclr"}}
    primary_readout: ClassVar[str] = "kmeans"
    tiny_settings: ClassVar[tuple[str, ...] | None] = ("params.projection_dim=8", "params.hidden_dim=16")

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__(cfg, image_shape, num_clusters)
        check_ranges(
            self.params, "params.", positive=("temperature",), at_least_one=("projection_dim", "hidden_dim")
        )
        hidden = self.params.hidden_dim or self.feature_dim
        self.projector = mlp(
            self.feature_dim, hidden, self.params.projection_dim, num_layers=2, batch_norm=True
        )

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """NT-Xent (Chen et al. 2020, Eq. 1) between the projections of the first two views."""
        view_a, view_b = self.views(batch.images)[:2]
        z = self.projector(self.backbone(torch.cat([view_a, view_b])))
        z_a, z_b = z.chunk(2)
        loss = nt_xent(z_a, z_b, self.params.temperature, gather=self.gather)
        return {"loss": loss, "nt_xent": loss}
