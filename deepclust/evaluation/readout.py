"""Read-outs of a trained method: k-means on its features, the argmax of each of its soft assignments (a cluster
head's), optionally smoothed by a vote of each sample's nearest neighbours or balanced, and the read-outs a
method computes over the whole evaluation set."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.precision import MixedPrecision

from deepclust.data import ArrayDataset, eval_batches
from deepclust.evaluation.balanced import balanced_assignment
from deepclust.evaluation.kmeans import kmeans
from deepclust.evaluation.metrics import evaluate_clustering
from deepclust.evaluation.neighbours import neighbour_vote_probs

#: the read-out name of a cluster head's soft assignments
HEAD = "head"


@dataclass
class ReadoutConfig:
    """Optional read-outs of soft assignments beside their argmax (the ``readout`` section of a run).

    Attributes:
        neighbour_vote: > 0: also each soft assignment averaged over every sample's this many nearest neighbours
            in feature space (read-out ``neighbour_vote`` for the cluster head); 0 = off.
        balanced: also each soft assignment (and vote) rescaled so that every cluster holds 1/K of the samples
            (``head_balanced``, ``neighbour_vote_balanced``), for about equally frequent classes.
    """

    neighbour_vote: int = 0
    balanced: bool = False


@dataclass
class ReadoutResult:
    """Cluster ids per read-out, the head's confidence, metrics per read-out (when labels exist), statistics."""

    clusters: dict[str, np.ndarray]
    confidence: np.ndarray | None
    metrics: dict[str, dict[str, float]]
    stats: dict[str, Any] = field(default_factory=dict)


def precision_autocast(precision: str | None, device: torch.device) -> Callable[[], Any] | None:
    """The autocast context of a Fabric precision (``bf16-mixed``, ``16-mixed``) on ``device``, or ``None`` for
    full precision: what :func:`extract` needs to read a finished run's model as its own evaluations did (on a
    CPU with bf16 instructions ``train.precision=auto`` evaluates under bf16 autocast). It is the context of
    Fabric's own mixed-precision plugin, the one the trainer's ``fabric.autocast`` enters."""
    if precision not in ("bf16-mixed", "16-mixed"):
        return None
    return MixedPrecision(precision, device.type).forward_context


@torch.no_grad()
def extract(
    method: torch.nn.Module,
    dataset: ArrayDataset,
    device: torch.device,
    batch_size: int | None = None,
    autocast: Any = None,
) -> dict[str, np.ndarray]:
    """``method.readout`` over every sample in dataset order, concatenated per output name.

    ``batch_size`` defaults to 1024 on a GPU and 256 on the CPU, where larger batches' activations pass glibc's
    mmap threshold and fault in fresh pages every batch (benchmarks/notes/2026-12-03-page-faults.md)."""
    if batch_size is None:
        batch_size = 1024 if device.type == "cuda" else 256
    was_training = method.training
    method.eval()
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for images, _ in eval_batches(dataset, batch_size, pin_memory=device.type == "cuda"):
            images = images.to(device, non_blocking=True)
            if autocast is not None:
                with autocast():
                    outputs = method.readout(images)
            else:
                outputs = method.readout(images)
            for name, value in outputs.items():
                parts.setdefault(name, []).append(value.float().cpu().numpy())
    finally:
        method.train(was_training)
    return {name: np.concatenate(values) for name, values in parts.items()}


def feature_spread(features: np.ndarray) -> float:
    """How far apart the features point: the total variance of the unit-length feature vectors, ``1 − ‖mean‖²``,
    in [0, 1]. It is 0 when every sample has the same direction, however large the features or their noise, so
    a collapsed representation reads near 0 at any scale (the variance of the raw features would not).

    Zero rows have no direction (a ReLU backbone's dead features are exactly 0): they are left out, and features
    that are all zero read 0, collapsed."""
    norms = np.linalg.norm(features.astype(np.float64), axis=1)
    if norms.size == 0 or norms.max() == 0:
        return 0.0
    alive = norms > 1e-6 * norms.max()
    unit = features[alive] / norms[alive, None]
    return float(max(0.0, 1.0 - np.square(unit.mean(axis=0, dtype=np.float64)).sum()))


def vote_name(name: str) -> str:
    """The neighbour-vote read-out of soft assignments ``name``: ``neighbour_vote`` for the cluster head."""
    return "neighbour_vote" if name == HEAD else f"{name}_neighbour_vote"


def compute_readouts(
    outputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    num_clusters: int,
    kmeans_cfg: Any,
    seed: int,
    options: ReadoutConfig | Any = None,
    dataset_readouts: dict[str, np.ndarray] | None = None,
    primary: str | None = None,
) -> ReadoutResult:
    """Every read-out of a method's outputs over the evaluation set, with metrics when ``labels`` exist.

    - ``kmeans``: k-means on ``outputs["features"]`` (raw, as the papers do, or L2-normalised with
      ``kmeans.normalize``);
    - the argmax of every other output, a soft assignment, under its own name (``head`` for a cluster head);
    - the method's ``dataset_readouts`` (cluster ids computed over the whole set), as they are;
    - the options of ``options`` (the ``readout`` section): with ``neighbour_vote = k > 0``, each soft
      assignment averaged over every sample's ``k`` nearest neighbours in feature space (``neighbour_vote`` for
      the head); with ``balanced``, each soft assignment and vote rescaled to equal cluster sizes before the
      argmax (``<name>_balanced``, :func:`~deepclust.evaluation.balanced.balanced_assignment`).

    ``confidence`` is the largest probability of the ``primary`` read-out when it is a soft assignment, else of
    the first soft assignment (``None`` without any).
    """
    options = options if options is not None else ReadoutConfig()
    features = outputs["features"]
    result = kmeans(
        features,
        num_clusters,
        n_init=kmeans_cfg.n_init,
        max_iter=kmeans_cfg.max_iter,
        seed=seed,
        backend=kmeans_cfg.backend,
        normalize=kmeans_cfg.normalize,
    )
    clusters = {"kmeans": result.labels}
    soft = {name: values for name, values in outputs.items() if name != "features"}
    for name, probs in soft.items():
        clusters[name] = probs.argmax(axis=1)
        if options.balanced:
            clusters[f"{name}_balanced"] = balanced_assignment(probs)
        if options.neighbour_vote > 0:
            voted = neighbour_vote_probs(probs, features, options.neighbour_vote)
            clusters[vote_name(name)] = voted.argmax(axis=1)
            if options.balanced:
                clusters[f"{vote_name(name)}_balanced"] = balanced_assignment(voted)
    if not soft:
        for setting, requested in [
            ("neighbour_vote", options.neighbour_vote > 0),
            ("balanced", options.balanced),
        ]:
            if requested:
                warnings.warn(
                    f"readout.{setting}: this method has no soft cluster assignments, so there is no {setting} "
                    "read-out",
                    stacklevel=2,
                )
    clusters.update(dataset_readouts or {})
    confidence_of = primary if primary in soft else next(iter(soft), None)
    confidence = None if confidence_of is None else soft[confidence_of].max(axis=1)
    metrics = (
        {name: evaluate_clustering(labels, pred) for name, pred in clusters.items()}
        if labels is not None
        else {}
    )
    stats: dict[str, Any] = {
        "largest_cluster_share": {
            name: float(np.bincount(pred).max() / len(pred)) for name, pred in clusters.items()
        },
        "clusters_used": {name: len(np.unique(pred)) for name, pred in clusters.items()},
        "feature_spread": feature_spread(features),
    }
    return ReadoutResult(clusters, confidence, metrics, stats)
