"""Heads on top of the backbone features: MLP projectors/predictors, SwAV prototypes, CC's cluster head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.errors import ConfigError


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
) -> nn.Sequential:
    """``num_layers`` Linear layers with BatchNorm (optional) and ReLU between them.

    ``batch_norm=True`` gives ``Linear → BN → ReLU → … → Linear``, the projector of SimCLR, BYOL and SwAV and
    BYOL's predictor; ``batch_norm=False`` gives ``Linear → ReLU → Linear``, CC's instance and cluster heads
    (CC's ``modules/network.py``). ``last_batch_norm`` appends a BatchNorm1d to the output. A Linear layer followed by
    BatchNorm has no bias (BatchNorm subtracts it anyway).
    """
    if num_layers < 1:
        raise ConfigError(f"an MLP head needs at least 1 layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim))
    return nn.Sequential(*layers)


class Prototypes(nn.Module):
    """SwAV's prototypes: ``K`` learnable vectors, scored by cosine similarity.

    ``forward`` returns ``normalize(z) @ normalize(W)ᵀ``, so the scores are cosines in [-1, 1] even between
    two renormalisations. SwAV renormalises the rows after every optimiser step (:meth:`normalize_`), which
    keeps ``W`` unit-norm; the values then equal SwAV's ``normalize(z) @ Wᵀ``, and the gradient reaching
    ``W`` is the part tangent to the unit sphere (the radial part is the one renormalisation would undo).
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_prototypes, bias=False)
        self.normalize_()

    @property
    def weight(self) -> nn.Parameter:
        """The K×dim prototype matrix."""
        return self.linear.weight

    def forward(self, z: Tensor) -> Tensor:
        """N×dim embeddings -> N×K cosine scores."""
        return F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).t()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Rescale every prototype to unit L2 norm, in place."""
        self.weight.copy_(F.normalize(self.weight, dim=1))


class ClusterHead(nn.Module):
    """CC's cluster-level head: an MLP to ``K`` logits, then a softmax over clusters (CC's ``modules/network.py``).

    ``forward`` returns probabilities (N×K, rows sum to 1, computed in float32 even under autocast);
    :meth:`logits` returns the pre-softmax scores. CC's head is ``Linear(d, d) → ReLU → Linear(d, K)``, the
    default here (``hidden_dim=None`` means ``d``, no BatchNorm).
    """

    def __init__(
        self, in_dim: int, num_clusters: int, hidden_dim: int | None = None, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden_dim or in_dim, num_clusters, num_layers=2, batch_norm=batch_norm)

    def logits(self, h: Tensor) -> Tensor:
        """N×d features -> N×K unnormalised scores."""
        return self.net(h)

    def forward(self, h: Tensor) -> Tensor:
        """N×d features -> N×K cluster probabilities."""
        return torch.softmax(self.logits(h).float(), dim=1)


def stacked_cluster_probs(heads: Sequence[ClusterHead], *features: Tensor) -> tuple[Tensor, ...]:
    """For each N×d ``features`` (e.g. the two views), H×N×K: every head's ``head(h)`` at once, the same values
    up to float rounding.

    The heads' weights are stacked once and each layer becomes one batched matrix product, so H heads cost a
    fixed number of operations instead of H times a head's. On a GPU the step is bound by the host's
    per-operation cost (benchmarks/RESULTS.md), and CC's five heads tripled the operations of a small-CNN step.
    Heads with BatchNorm are called one by one.
    """
    layers = [list(head.net) for head in heads]
    plain = all(
        len(net) == 3
        and isinstance(net[0], nn.Linear)
        and isinstance(net[1], nn.ReLU)
        and isinstance(net[2], nn.Linear)
        for net in layers
    )
    if not plain:
        return tuple(torch.stack([head(h) for head in heads]) for h in features)
    stacked = [
        (
            torch.stack([net[i].weight for net in layers]).mT,
            torch.stack([net[i].bias for net in layers])[:, None],
        )
        for i in (0, 2)
    ]  # per layer: H×in×out weights, H×1×out biases
    probs = []
    for h in features:
        x = h.unsqueeze(0).expand(len(heads), *h.shape)
        (weight_1, bias_1), (weight_2, bias_2) = stacked
        x = torch.baddbmm(bias_2, torch.relu(torch.baddbmm(bias_1, x, weight_1)), weight_2)
        probs.append(torch.softmax(x.float(), dim=-1))
    return tuple(probs)
