"""The uint8 batch pipeline: index batches fancy-indexed out of the dataset array, prefetched on a thread.

Images stay uint8 until they reach the training device, where the method's augmenter makes the views; a batch
costs one numpy fancy-index (no per-image Python work). Each DDP rank takes a disjoint slice of one global
permutation drawn from (seed, epoch), so the data order is reproducible and resumable mid-epoch.

Companions. A method may ask for extra samples alongside each batch (SCAN: one mined neighbour per anchor).
:meth:`TrainBatches.epoch` then calls ``companions(indices, generator)`` on the prefetch thread and fetches
those images too; the generator is seeded from (seed, epoch, batch, rank), so the companions of a batch are the
same after a mid-epoch resume.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from deepclust.data.datasets import ArrayDataset


def _fetch(dataset: ArrayDataset, indices: Tensor, pin: bool) -> tuple[Tensor, Tensor]:
    order = indices.numpy()
    # sorted reads are much faster from a memory map; the batch is then put back in permutation order
    sort = np.argsort(order, kind="stable")
    images = np.empty((len(order), *dataset.images.shape[1:]), dtype=np.uint8)
    images[sort] = dataset.images[order[sort]]
    batch = torch.from_numpy(images)
    return (batch.pin_memory() if pin else batch), indices


T = TypeVar("T")

#: ``(batch indices, generator) -> dataset indices of the companion samples, or None for none``
CompanionSampler = Callable[[Tensor, torch.Generator], Tensor | None]


def _prefetch(items: Iterator[T], depth: int = 3) -> Iterator[T]:
    """Run the producer on a background thread so reading the next batch overlaps the training step."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                buffer.put(item)
        except BaseException as err:  # surfaced in the consumer below
            buffer.put(err)
        buffer.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


class TrainBatches:
    """Shuffled, sharded, drop-last training batches; ``epoch(e, start=k)`` skips the first k batches."""

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pin_memory = pin_memory
        self.batches_per_epoch = len(dataset) // (batch_size * world_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def indices(self, epoch: int) -> Tensor:
        """This rank's index batches for ``epoch``: batches_per_epoch × batch_size."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        permutation = torch.randperm(len(self.dataset), generator=generator)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        # global batch b is rows b*world..: rank r takes the r-th slice of every global batch
        grid = permutation[:used].view(self.batches_per_epoch, self.world_size, self.batch_size)
        return grid[:, self.rank]

    def companion_generator(self, epoch: int, batch: int) -> torch.Generator:
        """The generator a batch's companions are drawn with: a function of (seed, epoch, batch, rank) only."""
        seed = ((self.seed * 100_003 + epoch) * 1_000_003 + batch) * 1_009 + self.rank
        return torch.Generator().manual_seed(seed % 2**63)

    def epoch(
        self, epoch: int, start: int = 0, companions: CompanionSampler | None = None
    ) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
        """``(images, companion images or None, indices)`` for the batches of ``epoch`` from batch ``start``."""
        batches = self.indices(epoch)

        def load(batch: int) -> tuple[Tensor, Tensor | None, Tensor]:
            images, indices = _fetch(self.dataset, batches[batch], self.pin_memory)
            extra = (
                None if companions is None else companions(indices, self.companion_generator(epoch, batch))
            )
            if extra is None:
                return images, None, indices
            return images, _fetch(self.dataset, extra, self.pin_memory)[0], indices

        return _prefetch(load(b) for b in range(start, len(batches)))


def eval_batches(
    dataset: ArrayDataset, batch_size: int, pin_memory: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every sample once, in dataset order."""
    order = torch.arange(len(dataset))
    return _prefetch(
        _fetch(dataset, order[i : i + batch_size], pin_memory) for i in range(0, len(dataset), batch_size)
    )
