"""Nearest neighbours by cosine similarity: faiss when installed (exact inner-product search), else scikit-learn.

SCAN (Van Gansbeke et al., ECCV 2020, Sec. 2.1) mines each sample's K nearest neighbours in the space of a
pretext model and reports their *accuracy*: the share of neighbours with the sample's own label. Both are here,
and the neighbour vote that smooths a cluster head's assignments over them.
"""

from __future__ import annotations

import numpy as np
import torch

from deepclust.errors import UserError
from deepclust.evaluation.kmeans import as_features, faiss_available


def nearest_neighbours(features: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Indices (N×k, int64) of every row's ``k`` most cosine-similar other rows, most similar first.

    The row itself is excluded, also when duplicates make it tie with another row.
    """
    x = as_features(features, "the neighbour search")
    n = len(x)
    if not 1 <= k < n:
        raise UserError(f"cannot find {k} neighbours among {n} samples: need 1 <= k < {n}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
    if faiss_available():
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        _, found = index.search(x, k + 1)
    else:
        from sklearn.neighbors import NearestNeighbors

        # on unit vectors the Euclidean order is the cosine order
        found = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
    found = found.astype(np.int64)
    # drop the row itself; where a duplicate tied with it and came first, drop the surplus last column instead
    is_self = found == np.arange(n)[:, None]
    missing_self = ~is_self.any(axis=1)
    is_self[missing_self, -1] = True
    return found[~is_self].reshape(n, k)


def neighbour_accuracy(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Share of the mined neighbours that have their anchor's label (SCAN's neighbour accuracy)."""
    return float((labels[neighbours] == labels[:, None]).mean())


def neighbour_vote_probs(
    probs: np.ndarray | torch.Tensor, features: np.ndarray | torch.Tensor, k: int
) -> np.ndarray:
    """Every sample's head probabilities averaged over its ``k`` cosine nearest neighbours (itself excluded)."""
    probs = as_features(probs, "the neighbour vote's probabilities")
    if len(probs) != len(features):
        raise UserError(f"{len(probs)} rows of probabilities for {len(features)} rows of features")
    return probs[nearest_neighbours(features, k)].mean(axis=1)


def neighbour_vote(
    probs: np.ndarray | torch.Tensor, features: np.ndarray | torch.Tensor, k: int
) -> np.ndarray:
    """Every sample's cluster by a vote of its ``k`` cosine nearest neighbours in feature space.

    The sample takes the cluster of the largest mean head probability over its neighbours (itself excluded): a
    transductive smoothing of the head's argmax that uses no labels. Samples the head places alone in a region
    of the feature space move to the cluster around them.
    """
    return neighbour_vote_probs(probs, features, k).argmax(axis=1)
