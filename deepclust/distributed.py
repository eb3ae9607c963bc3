"""Distributed helpers that degrade to a single process (no torch.distributed set-up needed to call them)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every rank the summed gradient of its own slice.

    Each rank computes a loss on the gathered tensor, so rank r's rows receive gradient from every rank's loss;
    summing them (all_reduce) restores the full-batch gradient, which DDP's averaging then divides by the world
    size exactly as it does for the parameters (a plain all_gather has no backward: lightly #1920).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]  # type: ignore[attr-defined]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows  # type: ignore[attr-defined]
        return grad[start : start + ctx.rows]  # type: ignore[attr-defined]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order), differentiably; identity on one process.

    Every rank must pass the same number of rows (the training loader drops the last incomplete batch).
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks in place (no gradient); identity on one process."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over ranks in place; identity on one process."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x
