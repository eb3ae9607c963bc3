"""The contract between a method and the training loop.

A method is an ``nn.Module`` that owns everything specific to it (backbone, heads, augmentations, EMA targets,
queues) and turns a batch of uint8 images into named losses. The loop only ever calls the hooks below, so adding
a method is one new file in this package and one line in the registry (``deepclust/methods/__init__.py``).

Step order in the loop (the same for every method)::

    losses = method(images_uint8)            # forward: views -> {"loss": total, "<name>": part, ...}
    backward(losses["loss"])
    method.on_before_optimizer_step(step)    # e.g. SwAV zeroes prototype grads while they are frozen
    optimizer.step(); scheduler update
    method.on_after_optimizer_step(progress)  # e.g. EMA target update, prototype renormalisation

Optional hooks serve methods that look beyond the batch (SCAN's mined neighbours, ProPos's pseudo-labels):
:meth:`Method.prepare_training` runs once before the first step of a new run, and :meth:`Method.on_epoch_start`
before the first step of every epoch (neither runs again on a resume in the middle of what they prepared:
whatever they compute must live in the method's state, which the checkpoint restores).
:meth:`Method.companion_indices` names extra samples to load with every batch; their uint8 images reach
``forward`` as its ``companions`` argument. A method that sets ``uses_indices`` gets the dataset indices of the
batch as ``forward(images, indices=...)`` (an int64 tensor, on the CPU, or on the GPU where DDP moved it), to
look up per-sample state such as pseudo-labels.

A method whose objective has an instance-level part of its own (CC's NT-Xent) sets ``supports_instance_only``
and accepts ``forward(images, instance_only=True)``: the loop then calls it that way on the batches of
``data.extra_split``, a pass over another split of the dataset at the start of every epoch (CC's STL-10 protocol
trains its instance head on the 100,000 unlabelled images this way). The parameters those losses do not use
(the cluster head) get no gradient in such steps; under DDP the loop then lets parameters go unused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

if TYPE_CHECKING:
    from deepclust.data import ArrayDataset


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands when a step's optimiser update is done (what schedules beside the rate read).

    Attributes:
        step: the 0-based index of the step just taken, counted in steps of the current size: after a resume
            with another number of processes or batch size, where those steps would have put the run.
        fraction: the share of training done, in [0, 1], on the learning-rate schedule's clock: ``step / total
            steps``, or the share of the time budget used when the schedule runs over time
            (``optim.schedule_over``), so that a budgeted run ends its momentum schedule with its rate.
        steps_per_epoch: the loop's steps per epoch (for settings given in epochs).
    """

    step: int
    fraction: float
    steps_per_epoch: int


class Method(nn.Module, ABC):
    """Base class of every trainable method.

    Subclasses set ``Config`` (a dataclass of their hyper-parameters, which becomes the ``params`` section of the
    run configuration), optionally ``DEFAULTS`` (overrides of other sections that their paper prescribes, as a
    nested dict), and implement :meth:`forward` and :meth:`readout`.
    """

    Config: ClassVar[type | None] = None
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    trainable: ClassVar[bool] = True
    #: which read-out gives the headline metrics: "head" (argmax of a cluster head) or "kmeans" (on features)
    primary_readout: ClassVar[str] = "kmeans"
    #: whether ``forward(images, instance_only=True)`` returns the instance-level losses alone (``data.extra_split``)
    supports_instance_only: ClassVar[bool] = False
    #: whether ``forward`` takes the batch's dataset indices as ``indices=`` (int64, CPU or training device)
    uses_indices: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_shape = image_shape
        self.num_clusters = num_clusters
        # The Config dataclass as a plain object: cheap attribute reads in forward, no OmegaConf nodes.
        self.params: Any = (
            OmegaConf.to_object(cfg.params) if isinstance(cfg.params, DictConfig) else cfg.params
        )

    @abstractmethod
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 N×C×H×W batch on the training device -> named scalar losses; ``"loss"`` is the total."""

    @abstractmethod
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        """Evaluation outputs for a uint8 batch: ``"features"`` (N×D, clustered by k-means) and, for methods
        with a cluster head, ``"probs"`` (N×K soft assignments). Implementations run under ``torch.no_grad``."""

    def prepare_training(self, dataset: ArrayDataset, device: torch.device) -> dict[str, Any]:
        """Called once before the first step of a new run, after the method is on ``device``; what it returns
        is logged (a ``prepare`` event in log.jsonl)."""
        return {}

    def on_epoch_start(self, dataset: ArrayDataset, device: torch.device, epoch: int) -> dict[str, Any]:
        """Called before the first step of every epoch (also epoch 0, after :meth:`prepare_training`), in
        training mode and counted as training time; what it returns is logged (an ``epoch_start`` event)."""
        return {}

    def companion_indices(self, indices: Tensor, generator: torch.Generator) -> Tensor | None:
        """Dataset indices of extra samples to load with the batch ``indices`` (``None``: none, the default).

        Runs on the data thread, so it must only read state that training does not change; draw any randomness
        from ``generator``, which makes the choice reproducible and resumable.
        """
        return None

    def on_before_optimizer_step(self, step: int) -> None:
        """Called after backward, before the optimiser step (gradients are available)."""

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """Called after the optimiser step (EMA updates, renormalisation, queues)."""

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: no weight decay on biases and normalisation weights (1-D tensors)."""
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
