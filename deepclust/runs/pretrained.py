"""Building a run's method, and rebuilding the trained method of a finished run.

A method that starts from a finished run (SCAN's backbone, self-labelling's model) names the setting that holds
it (``Method.pretrained_setting``); :func:`build_method` loads that run first and hands it to the new method's
:meth:`~deepclust.methods.Method.start_from`, so that no method reads run directories itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from deepclust.config import build_config, file_choices, load_yaml
from deepclust.errors import UserError, first_mismatch
from deepclust.methods import Method, method_class
from deepclust.runs.checkpoint import load_checkpoint
from deepclust.runs.run_dir import CONFIG, RunDir


def build_method(cfg: DictConfig, image_shape: tuple[int, int, int], num_clusters: int) -> Method:
    """The method of ``cfg`` for ``C×H×W`` images and K clusters, started from the finished run its
    ``pretrained_setting`` names, when it names one.

    The run is rebuilt under a forked random state, so the new method draws the same initial weights whether it
    starts from a run or not."""
    cls = method_class(cfg.method)
    if not issubclass(cls, Method):
        raise UserError(f"method {cfg.method!r} is not trained, so it has no model to build")
    setting = cls.pretrained_setting
    source = OmegaConf.select(cfg, setting) if setting is not None else None
    pretrained = None
    if setting is not None and source is not None:
        with torch.random.fork_rng(devices=[]):
            pretrained = load_run_method(
                str(source),
                image_shape,
                setting=setting,
                data=cfg.data if cls.pretrained_on_same_data else None,
                num_clusters=num_clusters if cls.pretrained_on_same_data else None,
                purpose=cls.pretrained_purpose,
            )
    method: Method = cls(cfg, image_shape, num_clusters)
    if pretrained is not None:
        method.start_from(pretrained, f"{setting}: {source}")
    return method


def _checkpoint_of(source: str, setting: str) -> Path:
    """The checkpoint a run directory (its last one) or a checkpoint file names."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{setting}: run directory not found: {path}")
    run = RunDir(path)
    if not run.last_checkpoint.is_file():
        method = _method_of(run)
        if method is not None and not method_class(method).trainable:
            raise UserError(f"{setting}: {run.path} is a {method} run, which has no trained model")
        raise UserError(f"{setting}: {run.path} has no checkpoint to start from ({run.last_checkpoint})")
    return run.last_checkpoint


def _method_of(run: RunDir) -> str | None:
    """The method a run directory's ``config.yaml`` names, if it can be read."""
    try:
        return file_choices(load_yaml(run.path / CONFIG), run.path / CONFIG)[0]
    except UserError:
        return None


def load_run_method(
    source: str,
    image_shape: tuple[int, int, int],
    *,
    setting: str,
    data: DictConfig | None = None,
    num_clusters: int | None = None,
    purpose: str = "",
) -> Method:
    """The trained method of a finished run: ``source`` is its directory (its last checkpoint) or a checkpoint
    file. The method is rebuilt from the configuration the checkpoint holds and filled with its weights.

    With ``data`` (a ``data`` section), the run must have been trained on the same ``name`` and ``split``, and
    with ``num_clusters`` also with that many clusters (``purpose`` says why, in the error). Every problem is one
    :class:`UserError` that starts with ``setting``."""
    path = _checkpoint_of(source, setting)
    checkpoint = load_checkpoint(path)
    weights, config, run_k = (checkpoint.get(key) for key in ("method", "config", "num_clusters"))
    if not isinstance(weights, dict) or not all(isinstance(key, str) for key in weights) or not weights:
        raise UserError(f"{setting}: {path} has no model weights (not a deepclust training checkpoint)")
    if not isinstance(config, str) or not isinstance(run_k, int) or isinstance(run_k, bool) or run_k < 2:
        raise UserError(
            f"{setting}: {path} has no configuration or number of clusters (not a deepclust checkpoint)"
        )
    try:
        cfg = build_config(config_file=OmegaConf.create(config), origin=f"the configuration in {path}")
    except UserError as err:
        raise UserError(f"{setting}: {err}") from None
    except Exception as err:  # a configuration text that is not YAML: a damaged checkpoint
        raise UserError(
            f"{setting}: cannot read the configuration in {path}: {str(err).splitlines()[0]}"
        ) from None
    checks: list[tuple[str, Any, Any]] = []
    if data is not None:
        checks = [(f"data.{key}", cfg.data[key], data[key]) for key in ("name", "split")]
    if num_clusters is not None:
        checks.append(("data.num_clusters", run_k, num_clusters))
    for key, theirs, ours in checks:
        if theirs != ours:
            raise UserError(
                f"{setting}: {path} was trained with {key}={theirs}, this run has {key}={ours}; {purpose}"
            )
    method = build_method(cfg, image_shape, run_k)
    if cfg.train.channels_last:
        # the weights' memory format as in training: under bf16 the convolutions' results depend on it
        method = method.to(memory_format=torch.channels_last)
    try:
        method.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(
            f"{setting}: {path} does not fit its own configuration ({first_mismatch(err)})"
        ) from None
    return method
