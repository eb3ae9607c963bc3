"""Heads on top of the backbone features: MLP projectors/predictors, SwAV prototypes, CC's cluster head, and
several heads side by side with the choice of the one read out (:class:`MultiHead`, CC's and SCAN's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.distributed import all_reduce_sum, world_size
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
    def weight(self) -> Tensor:
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


def _stacked_outputs(heads: Sequence[nn.Module], *features: Tensor) -> tuple[Tensor, ...]:
    """For each N×d ``features`` (e.g. the two views), H×N×K: every head's ``head(h)``; for CC's plain
    :class:`ClusterHead` (``Linear → ReLU → Linear → softmax``) all at once, the same values up to float rounding.

    The heads' weights are stacked once and each layer becomes one batched matrix product, so H heads cost a
    fixed number of operations instead of H times a head's. On a GPU the step is bound by the host's
    per-operation cost (benchmarks/RESULTS.md), and CC's five heads tripled the operations of a small-CNN step.
    Other heads (heads with BatchNorm, linear heads) are called one by one.
    """
    layers = [list(head.net) if isinstance(head, ClusterHead) else [] for head in heads]
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


def lowest_running_loss(running: Tensor) -> Tensor:
    """1-element index of the head with the lowest running loss (head 0 before any step: NaN reads as ∞), on
    the buffer's device, so that a training step can use it without waiting for the device."""
    return torch.nan_to_num(running, nan=float("inf")).argmin().view(1)


def at_head(values: Tensor, head: Tensor) -> Tensor:
    """``values[head]`` for a 1-element index on the device: ``index_select`` reads the index on the device
    (a Python-style ``values[head]`` may copy it to the host first, which waits for the GPU)."""
    return values.index_select(0, head).squeeze(0)


class MultiHead(nn.Module):
    """``num_heads`` heads side by side on the same input, and the one that is read out: the head with the lowest
    running loss, an exponential average of each head's training loss (as SCAN's code and IIC's sub-heads pick
    a head, without labels). CC's MLP cluster heads and SCAN's linear ones both fit.

    ``make_head`` builds each head, head 0 first (so the heads draw their initial weights in that order). The
    running losses are a buffer, NaN until the first :meth:`update`, and with several heads part of the state
    dict, so the choice is saved with the model (a single head has nothing to choose).
    ``params.num_heads`` and ``params.head_loss_momentum`` are checked here (a :class:`ConfigError`).
    """

    running_losses: Tensor

    def __init__(self, make_head: Callable[[], nn.Module], num_heads: int, momentum: float) -> None:
        super().__init__()
        if num_heads < 1:
            raise ConfigError(f"params.num_heads must be at least 1, got {num_heads}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"params.head_loss_momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.heads = nn.ModuleList(make_head() for _ in range(num_heads))
        losses = torch.full((num_heads,), float("nan"))
        self.register_buffer("running_losses", losses, persistent=num_heads > 1)

    def __len__(self) -> int:
        return len(self.heads)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.heads)

    def __getitem__(self, index: int) -> nn.Module:
        return self.heads[index]

    @property
    def best(self) -> int:
        """Index of the head that is read out: the one with the lowest running loss (reads it on the host)."""
        return int(lowest_running_loss(self.running_losses)) if len(self.heads) > 1 else 0

    @torch.no_grad()
    def update(self, losses: Tensor) -> Tensor:
        """Fold this step's per-head ``losses`` (H values) into the running losses and return the 1-element
        index of the lowest one, on the device (no wait for it).

        The losses are first averaged over processes, so that every process reads out the same head; the
        average over steps then starts from the first step's losses (NaN means "no step yet")."""
        losses = all_reduce_sum(losses.detach().clone()) / world_size()
        running, momentum = self.running_losses, self.momentum
        running.copy_(torch.where(torch.isnan(running), losses, momentum * running + (1 - momentum) * losses))
        return lowest_running_loss(running)

    def readout(self, *inputs: Tensor) -> Tensor:
        """The output of the read-out head (:attr:`best`)."""
        return self.heads[self.best](*inputs)

    def forward(self, *features: Tensor) -> tuple[Tensor, ...]:
        """For each N×d ``features``: every head's output, H×N×K, computed in one batched pass for CC's plain
        cluster heads; with a single head, that head's own N×K output (the plain call)."""
        if len(self.heads) == 1:
            return tuple(self.heads[0](h) for h in features)
        return _stacked_outputs(list(self.heads), *features)
