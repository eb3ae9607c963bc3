"""The equal-size read-out (``train.balanced_readout``): Sinkhorn rescaling of a head's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from deepclust.evaluation.balanced import balanced_assignment


def test_hand_computed_two_clusters() -> None:
    # Every sample prefers cluster 0; odds p0/p1 = 9, 4, 7/3, 1.5. With two clusters the rescaled plan
    # multiplies every sample's odds by one ratio r of the cluster scales, fixed by the equal-mass condition
    # Σ_j o_j r / (o_j r + 1) = N/K = 2 (r ≈ 0.30): samples with o_j r > 1 keep cluster 0.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    odds = probs[:, 0] / probs[:, 1]
    ratio = brentq(lambda r: (odds * r / (odds * r + 1)).sum() - 2.0, 1e-6, 1.0)
    assert ratio == pytest.approx(0.30, abs=5e-3)
    expected = np.where(odds * ratio > 1, 0, 1)
    assert expected.tolist() == [0, 0, 1, 1]
    assert balanced_assignment(probs).tolist() == expected.tolist()
    assert probs.argmax(axis=1).tolist() == [0, 0, 0, 0]  # the plain argmax puts all four together


def test_equal_sizes_and_confident_samples_kept() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3000, 6))
    logits[:, 0] += 1.0  # cluster 0 is favoured by the plain argmax
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    plain, balanced = probs.argmax(axis=1), balanced_assignment(probs)
    assert np.bincount(plain, minlength=6)[0] > 1000
    assert np.abs(np.bincount(balanced, minlength=6) - 500).max() <= 30
    confident = probs.max(axis=1) > 0.8
    assert confident.any() and (balanced[confident] == plain[confident]).all()


def test_balanced_head_is_unchanged() -> None:
    probs = np.tile(np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]]), (4, 1))
    assert balanced_assignment(probs).tolist() == probs.argmax(axis=1).tolist()


def test_cluster_without_mass_stays_empty() -> None:
    """No probability anywhere is nothing to balance towards: the other two clusters keep their samples."""
    probs = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0]])
    assert balanced_assignment(probs).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (np.ones(5), "N×K"),
        (np.ones((5, 1)), "N×K"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), "finite"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), "non-negative"),
    ],
)
def test_bad_input(probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        balanced_assignment(probs)
