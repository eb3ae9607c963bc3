"""k-means on both backends: recovers separated blobs, deterministic, validates its input."""

from __future__ import annotations

import numpy as np
import pytest

from deepclust.errors import UserError
from deepclust.evaluation import assign_to_centroids, evaluate_clustering, kmeans


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 20, size=(4, 5))
    labels = np.repeat(np.arange(4), 50)
    return (centres[labels] + rng.normal(0, 0.5, size=(200, 5))).astype(np.float32), labels


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_recovers_separated_blobs_deterministically(backend: str) -> None:
    x, y = blobs()
    first = kmeans(x, 4, n_init=3, seed=1, backend=backend)
    second = kmeans(x, 4, n_init=3, seed=1, backend=backend)
    assert first.backend == backend
    assert evaluate_clustering(y, first.labels)["acc"] == 1.0
    np.testing.assert_array_equal(first.labels, second.labels)
    brute_force = ((x - first.centroids[first.labels]) ** 2).sum(axis=1)
    np.testing.assert_allclose(first.distances, brute_force, rtol=1e-4, atol=1e-4)
    assert first.inertia == pytest.approx(float(brute_force.sum()), rel=1e-5)


def test_assign_to_centroids_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)).astype(np.float32)
    c = rng.normal(size=(5, 7)).astype(np.float32)
    labels, dists = assign_to_centroids(x, c, batch_size=64)
    full = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(dists, full.min(1), rtol=1e-5)


def test_image_shaped_input_is_flattened() -> None:
    x, y = blobs()
    result = kmeans(x.reshape(200, 1, 5, 1), 4, n_init=10)
    assert evaluate_clustering(y, result.labels)["acc"] == 1.0


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_normalize_clusters_directions_not_lengths(backend: str) -> None:
    # Two directions, each at lengths 1 and 10: by length k-means splits near from far, by direction it
    # recovers the two rays; the caller's array is left as it was.
    rng = np.random.default_rng(0)
    rays = np.repeat(np.array([[1.0, 0.0], [0.0, 1.0]]), 40, axis=0)
    lengths = np.tile(np.repeat([1.0, 10.0], 20), 2)[:, None]
    x = (rays * lengths + rng.normal(0, 0.05, size=(80, 2))).astype(np.float32)
    y, copy = np.repeat([0, 1], 40), x.copy()
    assert evaluate_clustering(y, kmeans(x, 2, n_init=3, backend=backend).labels)["acc"] < 0.8
    result = kmeans(x, 2, n_init=3, backend=backend, normalize=True)
    assert evaluate_clustering(y, result.labels)["acc"] == 1.0
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=0.01)
    np.testing.assert_array_equal(x, copy)


@pytest.mark.parametrize(
    ("k", "data", "message"),
    [(1, None, "at least 2"), (500, None, "more than the 200 samples"), (3, "nan", "NaN"), (3, "1d", "N×D")],
)
def test_bad_input_is_a_user_error(k: int, data: str | None, message: str) -> None:
    x, _ = blobs()
    if data == "nan":
        x[3, 2] = np.nan
    if data == "1d":
        x = x[:, 0].copy()
    with pytest.raises(UserError, match=message):
        kmeans(x, k)
