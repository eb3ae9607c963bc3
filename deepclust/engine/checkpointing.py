"""What a run saves and restores besides its log: the loop's state, the method and optimiser, every rank's
random state (``checkpoints/last.pt``), and the best evaluation so far (``checkpoints/best.pt``)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric import Fabric
from omegaconf import DictConfig

from deepclust.config import to_yaml
from deepclust.errors import UserError, first_mismatch
from deepclust.runs import RunDir, load_checkpoint, save_checkpoint
from deepclust.runs.checkpoint import rng_state, set_rng_state


@dataclass
class LoopState:
    """Where training is: everything besides the weights that a resume needs."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch (the data.extra_split batches come first)
    elapsed_s: float = 0.0  # training wall-clock time over all sessions (for the time budget)
    best_score: float = -math.inf
    steps_per_epoch: int = 0  # of the session that saved it


class Checkpoints:
    """Saves and restores one run's training state; every rank takes part."""

    def __init__(
        self,
        fabric: Fabric,
        run_dir: RunDir,
        cfg: DictConfig,
        num_clusters: int,
        method: torch.nn.Module,
        optimizer: Any,
    ) -> None:
        self.fabric = fabric
        self.run_dir = run_dir
        self.cfg = cfg
        self.num_clusters = num_clusters
        self.method = method
        self.optimizer = optimizer

    def _payload(self, state: LoopState, rng: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loop": vars(state).copy(),
            "rng": rng,
            "config": to_yaml(self.cfg),
            "num_clusters": self.num_clusters,
        }

    def _rng_states(self) -> dict[str, Any] | list[dict[str, Any]]:
        """This process's random state, or under DDP every rank's, in rank order (each rank draws its own
        augmentations, so each must get its own stream back on resume). Every rank must call it."""
        if self.fabric.world_size == 1:
            return rng_state()
        states: list[Any] = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(states, rng_state())
        return states

    def save_last(self, state: LoopState) -> None:
        """``checkpoints/last.pt``, written by rank 0; every rank must call it."""
        rng = self._rng_states()
        if self.fabric.is_global_zero:
            save_checkpoint(self._payload(state, rng), self.run_dir.last_checkpoint)
        self.fabric.barrier()

    def save_best(self, state: LoopState) -> None:
        """``checkpoints/best.pt``: rank 0 alone evaluates, so it holds rank 0's random state only (a resume
        reads last.pt's)."""
        save_checkpoint(self._payload(state, rng_state()), self.run_dir.best_checkpoint)

    def restore(self, steps_per_epoch: int) -> LoopState:
        """The method, the optimiser and every rank's random state from ``checkpoints/last.pt``; returns the loop
        state, its batch moved to the same share of the epoch when the steps per epoch changed (another number
        of processes or batch size). A checkpoint that does not fit is a :class:`UserError`."""
        path = self.run_dir.last_checkpoint
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        checkpoint = load_checkpoint(path)
        missing = next(
            (key for key in ("method", "optimizer", "loop", "rng") if not checkpoint.get(key)), None
        )
        if missing:  # readable, but not written by this loop (or hand-edited)
            raise UserError(
                f"cannot resume from {path}: not a deepclust training checkpoint (no {missing!r})"
            )
        try:
            self.method.load_state_dict(checkpoint["method"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(
                f"{path} does not fit this configuration ({first_mismatch(err)}); settings that shape the model"
                " or the optimiser (model.*, params.*, --clusters) cannot change on --resume"
            ) from None
        try:
            state = LoopState(**checkpoint["loop"])
        except TypeError:
            raise UserError(f"cannot resume from {path}: its loop state is not this version's") from None
        if state.steps_per_epoch != steps_per_epoch:
            state.batch = round(state.batch * steps_per_epoch / state.steps_per_epoch)
            state.steps_per_epoch = steps_per_epoch
        self._restore_rng(checkpoint["rng"], state.step)
        state.best_score = max(state.best_score, self._saved_best_score())
        return state

    def _restore_rng(self, saved: dict[str, Any] | list[dict[str, Any]], step: int) -> None:
        """Each rank's own random state; a checkpoint of another number of processes cannot give every rank its
        stream, so then each draws a new one from the seed and the step."""
        rank, world = self.fabric.global_rank, self.fabric.world_size
        if isinstance(saved, list) and len(saved) == world:
            set_rng_state(saved[rank])
        elif isinstance(saved, dict) and world == 1:
            set_rng_state(saved)
        else:
            self.fabric.seed_everything(self.cfg.seed + rank + world * step, verbose=False)

    def _saved_best_score(self) -> float:
        """The score of ``checkpoints/best.pt``: ``last.pt`` is written before the evaluation that may have
        replaced ``best.pt``, so its own best score can lag behind (−∞ without a readable ``best.pt``)."""
        best_path = self.run_dir.best_checkpoint
        if not best_path.is_file():
            return -math.inf
        try:
            return float(load_checkpoint(best_path)["loop"]["best_score"])
        except (UserError, KeyError, TypeError, ValueError):
            warnings.warn(f"{best_path} is unreadable; the next better evaluation replaces it", stacklevel=2)
            return -math.inf
