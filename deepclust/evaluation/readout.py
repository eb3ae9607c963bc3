"""Read-outs of a trained method: k-means on its features and, when it has one, the argmax of its cluster head
(optionally also smoothed by a vote of each sample's nearest neighbours)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.precision import MixedPrecision
from omegaconf import DictConfig

from deepclust.data import ArrayDataset
from deepclust.engine.data import eval_batches
from deepclust.evaluation.balanced import balanced_assignment
from deepclust.evaluation.kmeans import kmeans
from deepclust.evaluation.metrics import evaluate_clustering
from deepclust.evaluation.neighbours import neighbour_vote_probs


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
    """``method.readout`` over every sample in dataset order, concatenated (features, and probs if any).

    ``batch_size`` defaults to 1024 on a GPU and 256 on the CPU. There the small CNN's first activations of a
    1024 batch (103 MB) are above glibc's largest mmap threshold (32 MiB), so every batch maps fresh pages: on
    the dev CPU (AVX2) all 70,000 Fashion-MNIST images took 17–25 s and 4.3–5.2 million page faults at 1024,
    and 12–16 s at 256 (benchmarks/RESULTS.md, "Page faults on the CPU")."""
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


def compute_readouts(
    outputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    num_clusters: int,
    kmeans_cfg: DictConfig,
    seed: int,
    neighbour_vote_k: int = 0,
    balanced: bool = False,
) -> ReadoutResult:
    """Read-out ``kmeans`` (on the raw features, as the papers do, or L2-normalised with ``kmeans.normalize``)
    and ``head`` (argmax of ``probs``); with ``neighbour_vote_k > 0`` also ``neighbour_vote`` (the head's
    probabilities averaged over each sample's ``neighbour_vote_k`` nearest neighbours in feature space); with
    ``balanced`` also ``head_balanced`` and ``neighbour_vote_balanced``, the same probabilities rescaled to equal
    cluster sizes before the argmax (:func:`~deepclust.evaluation.balanced.balanced_assignment`)."""
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
    confidence = None
    if "probs" in outputs:
        probs = outputs["probs"]
        clusters["head"] = probs.argmax(axis=1)
        confidence = probs.max(axis=1)
        if balanced:
            clusters["head_balanced"] = balanced_assignment(probs)
        if neighbour_vote_k > 0:
            voted = neighbour_vote_probs(probs, features, neighbour_vote_k)
            clusters["neighbour_vote"] = voted.argmax(axis=1)
            if balanced:
                clusters["neighbour_vote_balanced"] = balanced_assignment(voted)
    else:
        for setting, requested in [("neighbour_vote", neighbour_vote_k > 0), ("balanced_readout", balanced)]:
            if requested:
                warnings.warn(
                    f"train.{setting}: this method has no cluster head, so there is no {setting} read-out",
                    stacklevel=2,
                )
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
