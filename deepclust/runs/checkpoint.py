"""Checkpoints: written atomically, loaded with ``weights_only=True`` (tensors and plain containers only)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepclust.errors import UserError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # a full disk, a kill: the half-written file must not take the space
        # name the checkpoint: a failed write names no file, or the temporary one
        if isinstance(err, OSError):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, on the CPU; a file that is not one (damaged, empty, or holding more than
    tensors and plain containers) is a :class:`UserError`, not a traceback from the unpickler."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        # torch's own messages run to several lines and, for weights_only, suggest turning the safety off
        raise UserError(
            f"cannot read checkpoint {path}: damaged, incomplete or not a deepclust checkpoint "
            f"({type(err).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """Every random source, in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            has_gauss,
            cached,
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
