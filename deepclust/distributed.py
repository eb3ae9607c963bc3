"""Distributed helpers that degrade to a single process (no torch.distributed set-up needed to call them).

Every function here is safe to call whether or not a process group exists: on one process ``world_size()`` is 1,
``rank()`` is 0 and the collectives are identities, so a loss written with them runs unchanged on a laptop.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

# torch 2.14 names the single-tensor collectives ``all_gather_single`` / ``reduce_scatter_single`` and deprecates
# the ``*_into_tensor`` / ``*_tensor`` names; torch 2.11 only has the latter. Both take (output, input).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group; 1 without torch.distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without torch.distributed."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every rank its slice of the gradient summed over ranks.

    Each rank computes its own loss L_r on the gathered tensor, so rank r's rows receive gradient from every
    rank's loss. Summing (reduce-scatter) gives rank r the gradient of ``Σ_r' L_r'`` w.r.t. its rows, and DDP's
    division of the parameter gradients by the world size then yields the gradient of ``mean_r L_r``, which is the
    single-process loss. A gather without this backward (plain ``all_gather``) loses the other ranks'
    contributions and leaves the gradients 1/world_size too small (lightly #1920).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        mine = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter_single(mine, grad)
        return mine


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order), differentiably; identity on one process.

    Every rank must pass the same shape: ``DistributedSampler`` gives each rank the same number of samples, so
    a smaller last batch is smaller on all ranks alike. Rank r's rows are ``[r·N, (r+1)·N)`` of the result.
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks in place and return it (not differentiable); identity on one process."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over ranks in place and return it; identity on one process."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``x`` in place with rank ``src``'s copy and return it; identity on one process."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x
