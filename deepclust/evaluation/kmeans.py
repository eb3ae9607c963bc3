"""k-means with several initialisations: faiss when installed (fast, multi-threaded), scikit-learn otherwise."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from deepclust.errors import UserError

BACKENDS = ("auto", "faiss", "sklearn")


@dataclass
class KMeansResult:
    """The best of the restarts (lowest inertia)."""

    labels: np.ndarray  # int64 (N,)
    centroids: np.ndarray  # float32 (K, D)
    inertia: float  # sum of squared distances to the assigned centroids
    distances: np.ndarray  # float32 (N,) squared distance of each point to its centroid
    backend: str  # "faiss" or "sklearn"


def as_features(features: np.ndarray | torch.Tensor, purpose: str = "k-means") -> np.ndarray:
    """``features`` as a contiguous float32 N×D array (N×... is flattened); a UserError naming ``purpose`` when
    they are not a batch of vectors or are not finite."""
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    array = np.asarray(features, dtype=np.float32)
    if array.ndim == 1 or array.ndim == 0:
        raise UserError(f"{purpose} needs N×D features, got shape {array.shape}")
    # N×C×H×W images (or any N×...) are flattened to N×D
    array = np.ascontiguousarray(array.reshape(array.shape[0], -1))
    if not np.isfinite(array).all():
        raise UserError(f"the features for {purpose} contain NaN or infinite values")
    return array


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def assign_to_centroids(
    features: np.ndarray | torch.Tensor, centroids: np.ndarray, batch_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row and its squared distance, in batches (memory O(batch × K))."""
    x = as_features(features)
    c = np.asarray(centroids, dtype=np.float32)
    c_sq = (c * c).sum(axis=1)
    labels = np.empty(len(x), dtype=np.int64)
    dists = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), batch_size):
        block = x[start : start + batch_size]
        # ||x - c||² = ||x||² - 2 x·c + ||c||², argmin over c does not need ||x||²
        partial = c_sq[None, :] - 2.0 * block @ c.T
        best = partial.argmin(axis=1)
        labels[start : start + batch_size] = best
        exact = ((block - c[best]) ** 2).sum(axis=1)
        dists[start : start + batch_size] = exact
    return labels, dists


def kmeans(
    features: np.ndarray | torch.Tensor,
    num_clusters: int,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    seed: int = 0,
    backend: str = "auto",
    normalize: bool = False,
    verbose: bool = False,
) -> KMeansResult:
    """Cluster N×D features (N×C×H×W inputs are flattened) into ``num_clusters`` groups.

    ``n_init`` restarts are run and the one with the lowest inertia is kept. Deterministic for a fixed seed.
    ``normalize`` scales every row to unit L2 norm first, so that k-means works in the cosine geometry that
    contrastive losses train (the centroids and distances are then those of the normalised rows).
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown k-means backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    x = as_features(features)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    if num_clusters < 2:
        raise UserError(f"the number of clusters K must be at least 2, got {num_clusters}")
    if num_clusters > len(x):
        raise UserError(f"K={num_clusters} clusters is more than the {len(x)} samples")
    if n_init < 1:
        raise UserError(f"k-means needs at least one initialisation, got n_init={n_init}")
    if backend == "faiss" and not faiss_available():
        raise UserError(
            "k-means backend 'faiss' is not installed: pip install faiss-cpu (or use backend=sklearn)"
        )
    use_faiss = backend == "faiss" or (backend == "auto" and faiss_available())
    if use_faiss:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        model = faiss.Kmeans(
            x.shape[1],
            num_clusters,
            niter=max_iter,
            nredo=n_init,
            seed=seed,
            verbose=verbose,
            # faiss subsamples to 256 points per centroid by default; cluster every point as k-means does
            max_points_per_centroid=max(256, -(-len(x) // num_clusters)),
            # faiss prints a warning to stderr below 39 points per centroid; few points are no error here
            min_points_per_centroid=1,
        )
        model.train(x)
        centroids = model.centroids.astype(np.float32)
        name = "faiss"
    else:
        from sklearn.cluster import KMeans

        model = KMeans(
            num_clusters, n_init=n_init, max_iter=max_iter, random_state=seed, verbose=int(verbose)
        )
        model.fit(x)
        centroids = model.cluster_centers_.astype(np.float32)
        name = "sklearn"
    labels, distances = assign_to_centroids(x, centroids)
    return KMeansResult(labels, centroids, float(distances.sum(dtype=np.float64)), distances, name)
