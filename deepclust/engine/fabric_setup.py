"""Lightning Fabric for a run: accelerator, devices, strategy and precision from the configuration, and the
method wrapped for them (SyncBatchNorm, channels-last, compile)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy
from omegaconf import DictConfig

from deepclust.errors import UserError
from deepclust.methods import Method


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX512-BF16), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fabric_settings(cfg: DictConfig) -> dict[str, Any]:
    """Accelerator, devices, strategy and precision for Fabric from ``cfg.device`` and ``cfg.train``."""
    device = str(cfg.device)
    cuda = torch.cuda.is_available()
    if device in ("cuda", "gpu") or device.startswith("cuda:"):
        if not cuda:
            raise UserError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        accelerator = "cuda"
    elif device == "cpu":
        accelerator = "cpu"
    elif device == "auto":
        accelerator = "cuda" if cuda else "cpu"
    else:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    devices: int | list[int] = cfg.train.devices
    if device.startswith("cuda:"):
        index, count = device.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise UserError(f"--device {device}: this machine's CUDA GPUs are cuda:0 to cuda:{count - 1}")
        devices = [int(index)]
    precision = str(cfg.train.precision)
    if precision == "auto":
        if accelerator == "cuda":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "bf16-mixed" if cpu_has_bf16() else "32-true"
    elif precision == "32":
        precision = "32-true"
    multi = cfg.train.num_nodes > 1 or (isinstance(devices, int) and devices > 1)
    strategy: str | DDPStrategy = "ddp" if cfg.train.strategy == "ddp" or multi else "auto"
    if strategy == "ddp" and cfg.data.extra_split is not None:
        # the instance-only steps on the extra split leave the cluster head without gradients
        strategy = DDPStrategy(find_unused_parameters=True)
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": cfg.train.num_nodes,
        "strategy": strategy,
        "precision": precision,
    }


def device_of(cfg: DictConfig) -> torch.device:
    """The one device a single-process job (k-means on a run's features) uses, as the loop reads ``--device``."""
    settings = fabric_settings(cfg)
    devices = settings["devices"]
    index = devices[0] if isinstance(devices, list) else 0
    return torch.device("cuda", index) if settings["accelerator"] == "cuda" else torch.device("cpu")


@contextmanager
def lightning_info_silenced() -> Iterator[None]:
    """Lightning announces its mixed precision and its distributed processes at INFO level while Fabric is built
    and launched, before the method has checked its settings; the trainer says both itself once they are
    checked, so that bad input stays one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # its logger's name depends on which lightning packages are imported
    try:
        yield
    finally:
        logging.disable(previous)


def launch_fabric(cfg: DictConfig) -> Fabric:
    """Fabric for ``cfg``, launched (under DDP, every process runs on from here)."""
    with lightning_info_silenced():
        fabric = Fabric(**fabric_settings(cfg))
        fabric.launch()
    if fabric.device.type == "cuda":
        # the input sizes never change, so cuDNN's timing of its convolution algorithms pays off
        torch.backends.cudnn.benchmark = bool(cfg.train.cudnn_benchmark)
    return fabric


def precision_of(fabric: Fabric) -> str | None:
    """The precision Fabric trains in (``32-true``, ``bf16-mixed``, ...)."""
    return getattr(getattr(fabric, "_precision", None), "precision", None)


def adapt_method(method: Method, fabric: Fabric, cfg: DictConfig) -> Method:
    """The method as the run trains it: SyncBatchNorm under multi-GPU DDP, channels-last, a compiled backbone."""
    if fabric.world_size > 1 and cfg.train.sync_batchnorm:
        if fabric.device.type == "cuda":
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        elif fabric.is_global_zero:  # once, not once per process
            # DDP refuses SyncBatchNorm on CPU ("SyncBatchNorm layers only work with GPU modules")
            warnings.warn(
                "train.sync_batchnorm is ignored on CPU: BatchNorm statistics stay per process", stacklevel=3
            )
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.train.compile and hasattr(method, "backbone"):
        # in place: wrapping it (torch.compile(module)) would prefix every checkpoint key with "_orig_mod."
        method.backbone.compile()
    return method
