"""A run's evaluations: every read-out over the whole dataset, metrics.json and assignments.csv, and the warnings
that a read-out or the representation has collapsed."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.fabric import Fabric
from omegaconf import DictConfig

from deepclust.data import ArrayDataset
from deepclust.engine.monitor import Monitor
from deepclust.evaluation.readout import ReadoutResult, compute_readouts, extract
from deepclust.methods import Method
from deepclust.runs import RunDir

# the feature spread (readout.feature_spread) below which the representation counts as collapsed
FEATURE_SPREAD_COLLAPSED = 1e-4


def evaluate_method(
    method: Method, dataset: ArrayDataset, num_clusters: int, cfg: DictConfig, fabric: Fabric
) -> ReadoutResult:
    """Every read-out of ``method`` on the whole ``dataset``: its outputs under the run's precision, the
    generic read-outs of ``cfg.readout`` and the method's own over the whole set."""
    outputs = extract(method, dataset, fabric.device, autocast=fabric.autocast)
    return compute_readouts(
        outputs,
        dataset.labels,
        num_clusters,
        cfg.kmeans,
        cfg.seed,
        options=cfg.readout,
        dataset_readouts=method.dataset_readouts(outputs),
        primary=method.primary_readout,
    )


class Evaluation:
    """Evaluates the run's method on rank 0 and writes what it finds into the run directory."""

    def __init__(
        self,
        method: Method,
        dataset: ArrayDataset,
        num_clusters: int,
        cfg: DictConfig,
        fabric: Fabric,
        run_dir: RunDir,
        monitor: Monitor,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.num_clusters = num_clusters
        self.cfg = cfg
        self.fabric = fabric
        self.run_dir = run_dir
        self.monitor = monitor

    def __call__(self, step: int, epoch: int) -> tuple[dict[str, Any], float | None]:
        """Evaluate at ``step``: the contents of metrics.json (empty on other ranks) and the primary read-out's
        ACC (``None`` without labels or on other ranks). Every rank must call it."""
        metrics: dict[str, Any] = {}
        score = None
        if self.fabric.is_global_zero:
            with self.monitor.console.status("evaluating on the full dataset"), torch.no_grad():
                result = evaluate_method(self.method, self.dataset, self.num_clusters, self.cfg, self.fabric)
            metrics, score = self._write(result, step, epoch)
        self.fabric.barrier()
        return metrics, score

    def _write(self, result: ReadoutResult, step: int, epoch: int) -> tuple[dict[str, Any], float | None]:
        primary = self.method.primary_readout
        readouts = result.metrics or {name: {} for name in result.clusters}
        self.run_dir.write_assignments(
            result.clusters,
            primary,
            ids=self.dataset.ids,
            labels=self.dataset.labels,
            confidence=result.confidence,
        )
        self.run_dir.write_metrics(readouts, primary, step=step, epoch=epoch, stats=result.stats)
        self.monitor.log(
            "eval", step=step, epoch=epoch, primary=primary, readouts=readouts, stats=result.stats
        )
        for name, values in readouts.items():
            self.monitor.scalars("eval", {f"{name}_{key}": value for key, value in values.items()}, step)
        self._warn_collapse(result)
        summary = "  ".join(
            f"{name}: ACC {v['acc']:.4f} NMI {v['nmi']:.4f}" for name, v in readouts.items() if "acc" in v
        )
        if summary:
            self.monitor.console.print(f"step {step} epoch {epoch}  {summary}")
        return self.run_dir.read_metrics(), readouts.get(primary, {}).get("acc")

    def _warn_collapse(self, result: ReadoutResult) -> None:
        limit = self.cfg.train.collapse_warning_fraction
        for name, share in result.stats["largest_cluster_share"].items():
            if share > limit:
                message = f"read-out {name!r}: one cluster holds {share:.0%} of the samples (collapse?)"
                warnings.warn(message, stacklevel=2)
                self.monitor.log("collapse_warning", readout=name, largest_cluster_share=share)
        spread = result.stats["feature_spread"]
        if spread < FEATURE_SPREAD_COLLAPSED:
            warnings.warn(
                f"the features all point the same way (spread {spread:.1e}): the representation has collapsed",
                stacklevel=2,
            )
            self.monitor.log("collapse_warning", feature_spread=spread)
