"""A run on disk: its directory (config, log, metrics, assignments), its checkpoints, and rebuilding its method."""

from deepclust.runs.checkpoint import load_checkpoint, save_checkpoint
from deepclust.runs.run_dir import RunDir

__all__ = ["RunDir", "load_checkpoint", "save_checkpoint"]
