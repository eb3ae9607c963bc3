"""Helpers shared by the test modules (pytest puts this folder on the import path)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import DictConfig

from deepclust.engine.trainer import Trainer, train
from deepclust.methods import Batch
from deepclust.runs import RunDir


def train_interrupted(cfg: DictConfig, run: RunDir, steps_done: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train until ``steps_done`` steps are done, then interrupt (KeyboardInterrupt) before the next one."""
    original_step = Trainer._step

    def interrupt(self: Trainer, batch: Batch) -> dict[str, torch.Tensor]:
        if self.state.step == steps_done:
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run)
    monkeypatch.setattr(Trainer, "_step", original_step)
