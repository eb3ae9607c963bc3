"""The uint8 batch pipeline: index batches fancy-indexed out of the dataset array, prefetched on a thread.

Images stay uint8 until they reach the training device, where the method's augmenter makes the views; a batch
costs one numpy fancy-index (no per-image Python work). Each DDP rank takes a disjoint slice of one global
permutation drawn from (seed, epoch), so the data order is reproducible and resumable mid-epoch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from deepclust.data import ArrayDataset


def _fetch(dataset: ArrayDataset, indices: Tensor, pin: bool) -> tuple[Tensor, Tensor]:
    order = indices.numpy()
    # sorted reads are much faster from a memory map; the batch is then put back in permutation order
    sort = np.argsort(order, kind="stable")
    images = np.empty((len(order), *dataset.images.shape[1:]), dtype=np.uint8)
    images[sort] = dataset.images[order[sort]]
    batch = torch.from_numpy(images)
    return (batch.pin_memory() if pin else batch), indices


def _prefetch(items: Iterator[tuple[Tensor, Tensor]], depth: int = 3) -> Iterator[tuple[Tensor, Tensor]]:
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

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.indices(epoch)[start:]
        return _prefetch(_fetch(self.dataset, b, self.pin_memory) for b in batches)


def eval_batches(
    dataset: ArrayDataset, batch_size: int, pin_memory: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every sample once, in dataset order."""
    order = torch.arange(len(dataset))
    return _prefetch(
        _fetch(dataset, order[i : i + batch_size], pin_memory) for i in range(0, len(dataset), batch_size)
    )
