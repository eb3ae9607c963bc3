"""Metrics against scikit-learn / scipy references and on edge cases."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from deepclust.errors import UserError
from deepclust.evaluation import ari, cluster_accuracy, evaluate_clustering, hungarian_match, nmi, purity


def brute_force_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one relabelling by trying every injective map (small K only)."""
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    best = 0
    targets = list(classes) + [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, perm, strict=True))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred, strict=True)))
    return best / len(y_true)


@pytest.mark.parametrize(
    ("n", "c", "k", "seed"), [(200, 3, 3, 0), (500, 4, 6, 1), (300, 6, 2, 2), (50, 5, 5, 3)]
)
def test_matches_sklearn_and_brute_force(n: int, c: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, c, n), rng.integers(0, k, n)
    assert nmi(y_true, y_pred) == pytest.approx(normalized_mutual_info_score(y_true, y_pred), abs=1e-9)
    assert ari(y_true, y_pred) == pytest.approx(adjusted_rand_score(y_true, y_pred), abs=1e-9)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force_accuracy(y_true, y_pred), abs=1e-12)


def test_large_random_labelings_match_sklearn() -> None:
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 20, 100_000)
    y_pred = (y_true + rng.integers(0, 3, 100_000)) % 25
    metrics = evaluate_clustering(y_true, y_pred)
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred), abs=1e-9)
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred), abs=1e-9)


def test_permuted_labels_are_perfect_and_non_contiguous_values_work() -> None:
    y_true = np.array([3, 3, 7, 7, 100, 100])
    y_pred = np.array([1, 1, 0, 0, 2, 2])
    assert evaluate_clustering(y_true, y_pred) == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}
    assert hungarian_match(y_true, y_pred) == {1: 3, 0: 7, 2: 100}


def test_hand_computed_accuracy_with_more_clusters_than_classes() -> None:
    # classes a=0 (4 samples), b=1 (2); clusters 0:{a,a,a}, 1:{a,b}, 2:{b}; best map 0->a, 2->b (or 1->b): 4/6
    y_true = [0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 2]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # purity lets every cluster keep its majority label: 3 (cluster 0) + 1 (cluster 1, a tie) + 1 (cluster 2)
    assert purity(y_true, y_pred) == pytest.approx(5 / 6)


def test_purity_bounds_every_merge_and_equals_acc_for_a_one_to_one_partition() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, size=300)
    fine = rng.integers(0, 8, size=300)
    merges = [np.array(m)[fine] for m in itertools.product(range(3), repeat=8)]
    assert max(cluster_accuracy(y_true, merged) for merged in merges) == pytest.approx(purity(y_true, fine))
    coarse = rng.integers(0, 3, size=300)
    assert purity(y_true, coarse) >= cluster_accuracy(y_true, coarse)
    assert purity(y_true, (y_true + 1) % 3) == 1.0
    # a noisy relabelling: every cluster's majority is another class, so purity's choice is ACC's matching
    noisy = np.where(rng.random(300) < 0.2, rng.integers(0, 3, size=300), (y_true + 1) % 3)
    assert 0.8 < cluster_accuracy(y_true, noisy) < 1.0
    assert purity(y_true, noisy) == pytest.approx(cluster_accuracy(y_true, noisy))
    with pytest.raises(UserError, match="differ in length"):
        purity([0, 1], [0])


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        ([0, 0, 0, 0], [0, 0, 0, 0]),
        ([0, 1, 2, 3], [0, 0, 0, 0]),
        ([0, 0, 0, 0], [0, 1, 2, 3]),
        ([0, 1], [1, 0]),
    ],
)
def test_single_cluster_edge_cases_agree_with_sklearn(y_true: list[int], y_pred: list[int]) -> None:
    assert nmi(y_true, y_pred) == pytest.approx(normalized_mutual_info_score(y_true, y_pred), abs=1e-12)
    assert ari(y_true, y_pred) == pytest.approx(adjusted_rand_score(y_true, y_pred), abs=1e-12)


def test_torch_tensors_are_accepted() -> None:
    """Classes {0}, {1, 2}, {3} against clusters {0, 1}, {2}, {3}: the best match gets 3 of 4 right."""
    y_true, y_pred = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2])
    metrics = evaluate_clustering(y_true, y_pred)
    assert metrics["acc"] == pytest.approx(0.75)
    assert metrics["nmi"] == pytest.approx(
        normalized_mutual_info_score([0, 1, 1, 2], [0, 0, 1, 2]), abs=1e-12
    )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0, 1], [0], "y_true and y_pred differ in length: 2 vs 1"),
        ([], [], "y_true is empty"),
        ([[0, 1]], [[0, 1]], "y_true must be a 1-D array of labels, got shape (1, 2)"),
        ([0.0, np.nan, np.nan], [0, 1, 1], "y_true contains NaN or infinite labels"),
        ([0, 1], [0.0, np.inf], "y_pred contains NaN or infinite labels"),
    ],
)
def test_bad_input_is_a_user_error(y_true: list, y_pred: list, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate_clustering(y_true, y_pred)


def test_two_million_points_match_scikit_learn() -> None:
    """Millions of points: ACC, NMI and ARI still equal the references (2·10¹² pairs of points, far past 2³¹, do
    not overflow). How fast this is belongs in benchmarks/, not in a test on a loaded CI machine."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 2_000_000)
    # three quarters keep their class under the relabelling c -> c + 3 (mod 10), the rest are noise
    relabelled = (y_true + 3) % 10
    y_pred = np.where(rng.random(y_true.size) < 0.75, relabelled, rng.integers(0, 10, y_true.size))
    metrics = evaluate_clustering(y_true, y_pred)
    assert metrics["acc"] == pytest.approx(np.mean(y_pred == relabelled), abs=1e-12)
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred), abs=1e-9)
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred), abs=1e-9)
