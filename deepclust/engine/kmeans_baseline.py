"""The k-means baseline run: k-means on raw pixels (the papers' "k-means" row) or on the features of a trained
run, written to a run directory like any other run."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console

from deepclust.data import ArrayDataset, load_dataset, resolve_num_clusters
from deepclust.engine.fabric_setup import device_of
from deepclust.evaluation import evaluate_clustering, kmeans
from deepclust.evaluation.readout import extract
from deepclust.runs import RunDir
from deepclust.runs.pretrained import load_run_method


def pixel_features(dataset: ArrayDataset) -> np.ndarray:
    """Raw pixels scaled to [0, 1] and flattened: N×(C·H·W) float32."""
    return np.asarray(dataset.images, dtype=np.float32).reshape(len(dataset), -1) / 255.0


def run_features(cfg: DictConfig, dataset: ArrayDataset, console: Console) -> np.ndarray:
    """The backbone features of every image under the trained run ``cfg.kmeans.features`` (same data)."""
    method = load_run_method(
        str(cfg.kmeans.features),
        dataset.image_shape,
        setting="kmeans.features",
        data=cfg.data,
        purpose="its features are those of other images",
    )
    device = device_of(cfg)  # the training loop's reading of --device, with its errors
    with console.status(f"extracting the features of {cfg.kmeans.features} on {device}"):
        return extract(method.to(device), dataset, device)["features"]


def run_kmeans(cfg: DictConfig, run_dir: RunDir, console: Console | None = None) -> dict[str, Any]:
    """Cluster ``cfg.data`` with k-means, write the run directory and return what ``metrics.json`` holds."""
    console = console or Console(stderr=True)
    console.print(f"loading [bold]{cfg.data.name}[/] (split {cfg.data.split})")
    dataset = load_dataset(
        cfg.data.name,
        cfg.data.split,
        cfg.data.root,
        image_size=cfg.data.image_size,
        folder_labels=cfg.data.folder_labels,
    )
    k = resolve_num_clusters(dataset, cfg.data.num_clusters)
    if cfg.kmeans.features == "pixels":
        features, source = pixel_features(dataset), "pixel"
    else:
        features, source = run_features(cfg, dataset, console), "learned"
    console.print(
        f"k-means: {len(dataset):,} images, {features.shape[1]} {source} features, K={k}, "
        f"{cfg.kmeans.n_init} initialisations, backend {cfg.kmeans.backend}"
        + (", L2-normalised" if cfg.kmeans.normalize else "")
    )
    console.print(f"run directory: [bold]{run_dir.path}[/]")  # once the run has what it needs to start
    run_dir.log("start", method="kmeans", dataset=dataset.name, samples=len(dataset), num_clusters=k)
    started = time.perf_counter()
    with console.status("running k-means"):
        result = kmeans(
            features,
            k,
            n_init=cfg.kmeans.n_init,
            max_iter=cfg.kmeans.max_iter,
            seed=cfg.seed,
            backend=cfg.kmeans.backend,
            normalize=cfg.kmeans.normalize,
        )
    seconds = time.perf_counter() - started
    readout: dict[str, float] = {"inertia": float(result.inertia)}
    if dataset.labels is not None:
        readout = {**evaluate_clustering(dataset.labels, result.labels), **readout}
    run_dir.write_assignments({"kmeans": result.labels}, "kmeans", ids=dataset.ids, labels=dataset.labels)
    metrics = {"kmeans": readout}
    run_dir.write_metrics(metrics, "kmeans", backend=result.backend, seconds=round(seconds, 3))
    run_dir.log("eval", readouts=metrics, backend=result.backend, seconds=round(seconds, 3))
    return run_dir.read_metrics()
