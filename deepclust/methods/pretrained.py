"""Rebuilding the trained method of a finished run, for the methods and read-outs that start from one."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from deepclust.engine.checkpoint import load_checkpoint
from deepclust.engine.run_dir import RunDir
from deepclust.errors import UserError
from deepclust.methods.base import Method
from deepclust.methods.common import first_mismatch


def load_pretrained_method(
    source: str,
    data: DictConfig,
    image_shape: tuple[int, int, int],
    num_clusters: int | None,
    *,
    setting: str = "params.pretrained",
    purpose: str = "self-labelling fine-tunes a clustering of the same data",
) -> Method:
    """The method of the finished run ``source``, rebuilt from its ``config.yaml`` and filled from
    ``checkpoints/last.pt``.

    The run must have been trained on the same data as ``data`` (this run's ``data`` section): the same
    ``name`` and ``split``, and the same ``num_clusters`` unless ``num_clusters`` is ``None``, in which case the
    method gets the K it was trained with. Every problem is one :class:`UserError` that starts with ``setting``.
    """
    from deepclust.config import build_config  # local: the configuration module imports the method registry
    from deepclust.methods import method_class

    try:
        run = RunDir.open_existing(source)
    except UserError as err:
        raise UserError(f"{setting}: {err}") from None
    cfg = build_config(config_file=run.path / "config.yaml")
    if not method_class(cfg.method).trainable:
        raise UserError(f"{setting}: {run.path} is a {cfg.method} run, which has no trained model")
    checkpoint = run.last_checkpoint
    if not checkpoint.is_file():
        raise UserError(f"{setting}: {run.path} has no checkpoint to start from ({checkpoint})")
    for key in ("name", "split") if num_clusters is None else ("name", "split", "num_clusters"):
        if cfg.data[key] != data[key]:
            raise UserError(
                f"{setting}: {run.path} was trained with data.{key}={cfg.data[key]}, this run has "
                f"data.{key}={data[key]}; {purpose}"
            )
    if num_clusters is None:
        started = [event for event in run.read_log() if event.get("event") == "start"]
        if not started:
            raise UserError(f"{setting}: {run.path} has no start event in its log.jsonl")
        num_clusters = started[0].get("num_clusters")
        if not isinstance(num_clusters, int) or isinstance(num_clusters, bool) or num_clusters < 1:
            raise UserError(f"{setting}: {run.path}'s start event in log.jsonl has no valid num_clusters")
    method: Method = method_class(cfg.method)(cfg, image_shape, num_clusters)
    if cfg.train.channels_last:
        # the weights' memory format as in training: under bf16 the convolutions' results depend on it, so
        # features re-read in another format differ from the run's own evaluation in the last bits
        method = method.to(memory_format=torch.channels_last)
    weights = load_checkpoint(checkpoint).get("method")
    if not isinstance(weights, dict) or not all(isinstance(key, str) for key in weights):
        # a readable checkpoint without model weights (not written by deepclust, or hand-edited)
        raise UserError(
            f"{setting}: {checkpoint} does not fit its own configuration (no model weights under 'method')"
        )
    try:
        method.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(
            f"{setting}: {checkpoint} does not fit its own configuration ({first_mismatch(err)})"
        ) from None
    return method
