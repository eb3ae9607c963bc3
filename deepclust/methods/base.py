"""The contract between a method and the training loop.

A method is an ``nn.Module`` that owns everything specific to it (backbone, heads, augmentations, EMA targets,
queues) and turns a batch of uint8 images into named losses. The loop only ever calls the hooks below, so adding
a method is one new file in this package and one line in the registry (``deepclust/methods/__init__.py``).

Step order in the loop (the same for every method)::

    losses = method(batch)                       # forward: Batch -> {"loss": total, "<name>": part, ...}
    backward(losses["loss"])
    method.on_before_optimizer_step(progress)    # e.g. SwAV zeroes prototype grads while they are frozen
    optimizer.step(); scheduler update
    method.on_after_optimizer_step(progress)     # e.g. EMA target update, prototype renormalisation

:class:`Batch` is the only argument of ``forward``: the uint8 images, their dataset indices (for per-sample
state such as ProPos's pseudo-labels), the companion images a method asked for (SCAN's neighbours), and the
split they come from. Optional hooks serve methods that look beyond the batch:
:meth:`Method.prepare_training` runs once before the first step of a new run, and :meth:`Method.on_epoch_start`
before the first step of every epoch (neither runs again on a resume in the middle of what they prepared:
whatever they compute must live in the method's state, which the checkpoint restores).
:meth:`Method.companion_indices` names extra samples to load with every batch.

A method whose objective has an instance-level part of its own (CC's NT-Xent) sets ``uses_extra_split``: the
loop then also hands it the batches of ``data.extra_split`` (``batch.split == "extra"``), a pass over another
split of the dataset at the start of every epoch, for which it returns those losses alone (CC's STL-10 protocol
trains its instance head on the 100,000 unlabelled images this way). The parameters those losses do not use get
no gradient in such steps; under DDP the loop then lets parameters go unused.

Read-outs. :meth:`Method.readout` maps a uint8 batch to named outputs: ``"features"`` (clustered by k-means)
and soft assignments under any other name (N×K, rows summing to 1; ``"head"`` for a cluster head), each read out
by its argmax under its own name. :meth:`Method.dataset_readouts` adds read-outs computed over the whole evaluation set
(e.g. codes balanced over every sample); ``primary_readout`` names the one whose metrics are the headline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

if TYPE_CHECKING:
    from deepclust.data import ArrayDataset


#: ``Batch.split`` of the clustered split's batches and of ``data.extra_split``'s
MAIN_SPLIT = "main"
EXTRA_SPLIT = "extra"


@dataclass
class Batch:
    """What the loop hands :meth:`Method.forward`: one batch and where it comes from. (Not frozen: Fabric's
    precision plugin rebuilds the dataclasses it passes to the module, converting their floating tensors.)

    Attributes:
        images: uint8 N×C×H×W images on the training device.
        indices: their int64 dataset indices (on the CPU, or on the training device where DDP moved them);
            ``None`` only for batches that do not come from a dataset (tests, benchmarks).
        companions: the uint8 images of :meth:`Method.companion_indices`, on the training device, when the
            method asked for any.
        split: ``"main"`` for the clustered split, ``"extra"`` for ``data.extra_split``, whose batches train a
            method's instance-level losses only (methods that set ``uses_extra_split``).
    """

    images: Tensor
    indices: Tensor | None = None
    companions: Tensor | None = None
    split: str = MAIN_SPLIT

    @property
    def is_extra(self) -> bool:
        """Whether the batch comes from ``data.extra_split``."""
        return self.split == EXTRA_SPLIT

    def require_indices(self, method: str) -> Tensor:
        """The dataset indices, which ``method`` needs for its per-sample state."""
        if self.indices is None:
            raise RuntimeError(f"{method} looks up per-sample state: its batches need their dataset indices")
        return self.indices

    def require_companions(self, method: str) -> Tensor:
        """The companion images, which ``method`` asked for with :meth:`Method.companion_indices`."""
        if self.companions is None:
            raise RuntimeError(f"{method} trains on companion samples: its batches need their companions")
        return self.companions


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


class MethodSpec:
    """What the registry, the configuration and the loader of runs read of a method's class before building it.

    ``Config`` is a dataclass of the method's hyper-parameters, which becomes the ``params`` section of the run
    configuration; ``DEFAULTS`` are overrides of other sections that its paper prescribes, as a nested dict.
    """

    Config: ClassVar[type | None] = None
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    trainable: ClassVar[bool] = True
    #: the read-out that gives the headline metrics: "kmeans" (on features), the name of a soft-assignment
    #: output of :meth:`readout` ("head" for a cluster head), or one of :meth:`dataset_readouts`
    primary_readout: ClassVar[str] = "kmeans"
    #: whether ``forward`` takes ``data.extra_split``'s batches (``batch.split == "extra"``) and returns the
    #: instance-level losses alone for them
    uses_extra_split: ClassVar[bool] = False
    #: overrides that make the method small for the generic method tests on 8×8 digits (head sizes, not what
    #: it computes); every registered trainable method declares them, ``()`` when its defaults are small
    tiny_settings: ClassVar[tuple[str, ...] | None] = None
    #: the setting that names a finished run (its directory or a checkpoint) this method starts from, e.g.
    #: ``"params.pretrained"``; the run is rebuilt and handed to :meth:`start_from` (``deepclust.runs``)
    pretrained_setting: ClassVar[str | None] = None
    #: whether that run must have clustered the same data (name, split and K) as this one
    pretrained_on_same_data: ClassVar[bool] = False
    #: why it must, for the error that says it was not
    pretrained_purpose: ClassVar[str] = ""


class Method(MethodSpec, nn.Module, ABC):
    """Base class of every trainable method: subclasses set the :class:`MethodSpec` attributes they need and
    implement :meth:`forward` and :meth:`readout`."""

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
    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """A batch -> named scalar losses; ``"loss"`` is the total."""

    @abstractmethod
    def readout(self, images: Tensor) -> dict[str, Tensor]:
        """Evaluation outputs for a uint8 batch: ``"features"`` (N×D, clustered by k-means) and soft assignments
        under any other name (N×K; ``"head"`` for a cluster head). Implementations run under ``torch.no_grad``."""

    def dataset_readouts(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Read-outs over the whole evaluation set, from :meth:`readout`'s outputs of every sample in dataset
        order: name -> N cluster ids (none by default)."""
        return {}

    def start_from(self, pretrained: Method, source: str) -> None:
        """Take what this method needs from ``pretrained``, the trained method of the run that
        ``pretrained_setting`` names (``source`` says which, for errors); called once, right after construction."""
        raise NotImplementedError(f"{type(self).__name__} does not start from a finished run")

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

    def on_before_optimizer_step(self, progress: TrainingProgress) -> None:
        """Called after backward, before the optimiser step (gradients are available)."""

    def on_after_optimizer_step(self, progress: TrainingProgress) -> None:
        """Called after the optimiser step (EMA updates, renormalisation, queues)."""

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: no weight decay on biases and normalisation weights (1-D tensors)."""
        decay, no_decay = list[nn.Parameter](), list[nn.Parameter]()
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
