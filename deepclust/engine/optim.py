"""Optimisers (Adam, AdamW, SGD, LARS) and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from omegaconf import DictConfig
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as used by BYOL and SwAV.

    For every parameter tensor not in a group with ``lars_exclude=True`` (biases, normalisation weights)::

        g ← g + wd·w;   g ← g · η‖w‖/‖g‖ (when both norms are > 0);   v ← m·v + g;   w ← w − lr·v

    The trust ratio divides by the norm of the decayed gradient, as BYOL's optimiser does; You et al. and
    LARC (SwAV's, solo-learn's) divide by ‖g‖ + wd‖w‖, which differs only by the tiny decays they use.
    ``clip=True`` is LARC's clipping (solo-learn's ``clip_lr``): the factor becomes min(η‖w‖/‖g‖ / lr, 1), so no
    layer's rate exceeds ``lr``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        clip: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "clip": clip,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        # one multi-tensor kernel per operation and group (torch._foreach_*), not one per tensor: a GPU step is
        # bound by the host's per-operation cost (benchmarks/notes/2026-11-30-h200-gpu.md)
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            grads = [param.grad for param in params]
            if not group["lars_exclude"]:
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                param_norms = torch.stack(torch._foreach_norm(params))
                grad_norms = torch.stack(torch._foreach_norm(grads))
                trust = group["trust_coefficient"] * param_norms / grad_norms
                if group["clip"]:
                    trust = torch.clamp(trust / group["lr"], max=1.0)
                trust = torch.where((param_norms > 0) & (grad_norms > 0), trust, torch.ones_like(trust))
                grads = [grad * scale for grad, scale in zip(grads, trust.unbind(), strict=True)]
            # a new buffer starts at zero, so its first update m·0 + g is exactly g
            buffers = [
                self.state[param].setdefault("momentum_buffer", torch.zeros_like(param)) for param in params
            ]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


def scaled_lr(optim_cfg: DictConfig, global_batch: int) -> float:
    """The base learning rate after batch-size scaling (Goyal et al. 2017 linear rule, or square root)."""
    if optim_cfg.lr_scaling == "linear":
        return optim_cfg.lr * global_batch / 256
    if optim_cfg.lr_scaling == "sqrt":
        return optim_cfg.lr * math.sqrt(global_batch / 256)
    return float(optim_cfg.lr)


def build_optimizer(
    param_groups: list[dict[str, Any]], optim_cfg: DictConfig, global_batch: int
) -> Optimizer:
    """The optimiser named by ``optim.name``; groups keep their own weight decay (and LARS exclusion)."""
    lr = scaled_lr(optim_cfg, global_batch)
    name = optim_cfg.name
    for group in param_groups:
        group["base_lr"] = lr
    if name == "lars":
        return LARS(
            param_groups,
            lr=lr,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
            trust_coefficient=optim_cfg.lars_trust_coefficient,
            clip=optim_cfg.lars_clip,
        )
    groups = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in param_groups]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.Adam(groups, lr=lr)


def lr_at(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
    progress: float | None = None,
) -> float:
    """Linear warm-up from ~0 to ``base_lr`` over ``warmup_steps``, then constant or cosine to ``min_lr_ratio``·lr.

    The cosine's progress is ``(step − warmup) / (total − warmup)``, or ``progress`` (in [0, 1]) when given:
    the share of a time budget used, for schedules over time.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if progress is None:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, progress))
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr`` times its ``lr_scale`` (1 unless the method's group sets one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
