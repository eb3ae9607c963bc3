"""Exponential moving averages of a module (BYOL-style target networks) and their momentum schedule.

The target is an ordinary frozen copy of the online module, registered on the method like any other
sub-module so that it moves with ``.to(device)`` and round-trips through checkpoints. One update is
``ξ ← τ·ξ + (1 − τ)·θ`` over all parameters and floating-point buffers (BatchNorm running statistics), done
with two fused ``torch._foreach_*`` kernels per dtype group instead of one small kernel per tensor.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def cosine_momentum(fraction: float, base: float) -> float:
    """BYOL's schedule (Grill et al. 2020, §3.2): ``τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2``.

    ``fraction`` is ``k/K``, the share of training done (clamped to [0, 1]): ``τ`` starts at ``base`` and rises
    to 1 at the end of training.
    """
    fraction = min(max(fraction, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * fraction) + 1.0) / 2.0


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters never receive gradients (the EMA target's initial state)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def _tensors(module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(floating-point parameters and buffers, other buffers such as BatchNorm's ``num_batches_tracked``)."""
    floats = [p.data for p in module.parameters()]
    others: list[Tensor] = []
    for buf in module.buffers():
        (floats if buf.is_floating_point() else others).append(buf)
    return floats, others


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target ← momentum·target + (1 − momentum)·online`` for parameters and float buffers.

    Integer buffers (step counters) are copied. ``target`` must have the structure of ``online`` (as made by
    :func:`frozen_copy`); a mismatch raises ``ValueError`` instead of silently pairing the wrong tensors.
    """
    target_floats, target_others = _tensors(target)
    online_floats, online_others = _tensors(online)
    if len(target_floats) != len(online_floats) or len(target_others) != len(online_others):
        raise ValueError("ema_update_: target and online modules have different structures")
    # _foreach kernels need matching dtype/device within one call; group so mixed-precision modules work too.
    groups: dict[tuple[torch.dtype, torch.device], tuple[list[Tensor], list[Tensor]]] = {}
    for t, o in zip(target_floats, online_floats, strict=True):
        if t.shape != o.shape:
            raise ValueError(f"ema_update_: shape mismatch {tuple(t.shape)} vs {tuple(o.shape)}")
        pair = groups.setdefault((t.dtype, t.device), ([], []))
        pair[0].append(t)
        pair[1].append(o.to(t.dtype))
    for targets, onlines in groups.values():
        torch._foreach_mul_(targets, momentum)
        torch._foreach_add_(targets, onlines, alpha=1.0 - momentum)
    for t, o in zip(target_others, online_others, strict=True):
        t.copy_(o)
