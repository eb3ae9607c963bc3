"""NNCLR's support set: a first-in-first-out queue of recent embeddings, searched for nearest neighbours."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepclust.distributed import all_gather_with_grad

#: by default, images larger than this (per side) are average-pooled to it before they become pixel keys
PIXEL_KEY_SIDE = 32


def pixel_keys(images: Tensor, side: int = PIXEL_KEY_SIDE) -> Tensor:
    """Unit-length, mean-centred pixel vectors of a uint8 (or float) ``N×C×H×W`` batch, float32, ``N×(C·h·w)``.

    Their dot products are the images' pixel correlations, so a neighbour is an image of the same shape and
    layout whatever its overall brightness. Sides above ``side`` are average-pooled down to it, so that a support
    set of large images stays small and quick to search (a 224 px RGB key would be 150,528 numbers, 32 px 3,072).
    """
    if side < 1:
        raise ValueError(f"a pixel key has sides of at least one pixel, got {side}")
    x = images.float()
    if max(x.shape[-2:]) > side:
        x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], side), min(x.shape[-1], side)))
    x = x.flatten(1)
    return F.normalize(x - x.mean(dim=1, keepdim=True), dim=1)


def pixel_key_size(image_shape: tuple[int, int, int], side: int = PIXEL_KEY_SIDE) -> int:
    """Length of the :func:`pixel_keys` of ``C×H×W`` images."""
    channels, height, width = image_shape
    return channels * min(height, side) * min(width, side)


class SupportSet(nn.Module):
    """The ``size`` most recent embeddings (``dim``), each found by the cosine similarity of its key.

    Keys are the embeddings themselves (NNCLR) unless ``key_dim`` is given, in which case every pushed
    embedding comes with a key of that size (e.g. :func:`pixel_keys` of its image). The queue is a ring:
    a push overwrites the oldest rows, and no row moves. Under torch.distributed every process pushes the
    gathered batch of all processes, so every process holds the same global support set, as in NNCLR's code.
    The buffers and the fill state are part of the state dict, so a resumed run searches the same set.
    """

    def __init__(self, size: int, dim: int, key_dim: int | None = None) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"a support set holds at least one embedding, got size {size}")
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("keys", torch.zeros(size, key_dim) if key_dim else None)
        # host-side counters: reading them needs no device synchronisation
        self._filled = 0
        self._next = 0

    @property
    def full(self) -> bool:
        """Whether every row holds a pushed embedding (NNCLR searches the set only then)."""
        return self._filled == self.embeddings.shape[0]

    def nearest(self, queries: Tensor) -> Tensor:
        """The stored embedding whose key is most similar to each of the unit-length ``queries`` (N×key size)."""
        keys = self.embeddings if self.keys is None else self.keys
        # outside autocast: bf16 similarities near 1 differ by less than their rounding, so the ranking would not be
        with torch.no_grad(), torch.autocast(queries.device.type, enabled=False):
            index = (queries.detach().to(keys.dtype) @ keys.T).argmax(dim=1)
            return self.embeddings[index]

    @torch.no_grad()
    def push(self, embeddings: Tensor, keys: Tensor | None = None) -> None:
        """Store ``embeddings`` (N×dim) with their ``keys`` (N×key size; required if and only if the set has
        separate keys), gathered from every process, over the oldest rows."""
        if (keys is None) != (self.keys is None):
            raise ValueError("keys must be given exactly when the support set was built with key_dim")
        new = all_gather_with_grad(embeddings.detach().to(self.embeddings.dtype))
        new_keys = None if keys is None else all_gather_with_grad(keys.detach().to(self.keys.dtype))
        size = self.embeddings.shape[0]
        if new.shape[0] > size:  # only the latest rows fit
            new = new[-size:]
            new_keys = None if new_keys is None else new_keys[-size:]
        rows = (self._next + torch.arange(new.shape[0])) % size
        rows = rows.to(self.embeddings.device)
        self.embeddings[rows] = new
        if new_keys is not None:
            self.keys[rows] = new_keys
        self._next = (self._next + new.shape[0]) % size
        self._filled = min(size, self._filled + new.shape[0])

    def get_extra_state(self) -> dict[str, Any]:
        """The fill state, stored in the state dict next to the buffers."""
        return {"filled": self._filled, "next": self._next}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the fill state of :meth:`get_extra_state`."""
        self._filled = int(state["filled"])
        self._next = int(state["next"])

    def extra_repr(self) -> str:
        key = "embeddings" if self.keys is None else f"{self.keys.shape[1]}-d keys"
        return f"size={self.embeddings.shape[0]}, dim={self.embeddings.shape[1]}, searched by {key}"
