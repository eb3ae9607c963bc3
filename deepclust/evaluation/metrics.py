"""Clustering metrics: ACC with Hungarian matching, NMI (arithmetic normalisation) and ARI.

Everything is computed from the contingency matrix, so the cost is one ``np.unique`` and one ``np.bincount`` over
the samples (no Python loop over samples) and the metrics stay fast for millions of points. Values match
scikit-learn's ``normalized_mutual_info_score`` and ``adjusted_rand_score``, including their edge cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from deepclust.errors import UserError

LabelsLike = np.ndarray | torch.Tensor | Sequence[int]


def _as_labels(values: LabelsLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise UserError(f"{name} must be a 1-D array of labels, got shape {array.shape}")
    if array.size == 0:
        raise UserError(f"{name} is empty")
    # np.unique would merge the NaNs into one label
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise UserError(f"{name} contains NaN or infinite labels")
    return array


def contingency_matrix(y_true: LabelsLike, y_pred: LabelsLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts C×K int64, the true label values, the predicted cluster values); any label values allowed."""
    true = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise UserError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    true_values, true_index = np.unique(true, return_inverse=True)
    pred_values, pred_index = np.unique(pred, return_inverse=True)
    c, k = true_values.size, pred_values.size
    counts = np.bincount(true_index * k + pred_index, minlength=c * k).reshape(c, k)
    return counts.astype(np.int64), true_values, pred_values


def hungarian_match(y_true: LabelsLike, y_pred: LabelsLike) -> dict[int, int]:
    """The one-to-one map predicted cluster -> true label that maximises agreement (Kuhn-Munkres).

    With more clusters than classes, the surplus clusters are left out of the map (they count as errors).
    """
    counts, true_values, pred_values = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {pred_values[c].item(): true_values[r].item() for r, c in zip(rows, cols, strict=True)}


def cluster_accuracy(y_true: LabelsLike, y_pred: LabelsLike) -> float:
    """ACC = max over one-to-one maps m of (1/N) Σ_i 1[y_i = m(c_i)], on the rectangular contingency matrix."""
    counts, _, _ = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def purity(y_true: LabelsLike, y_pred: LabelsLike) -> float:
    """Purity = (1/N) Σ_k max_c n_ck: every cluster takes its most frequent label (a many-to-one map).

    It bounds from above the ACC of any merge of the clusters into fewer groups, so on an over-clustering it says
    how pure a partition of that granularity can be. Unlike ACC it rises towards 1 as clusters get smaller, so
    it compares partitions only at equal numbers of clusters.
    """
    counts, _, _ = contingency_matrix(y_true, y_pred)
    return float(counts.max(axis=0).sum() / counts.sum())


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _nmi_from_counts(counts: np.ndarray) -> float:
    c, k = counts.shape
    # sklearn: two single-cluster (or all-singleton, identical) labelings are perfectly correlated
    if (c == k == 1) or (c == k == counts.sum()):
        return 1.0
    total = counts.sum()
    row = counts.sum(axis=1)
    col = counts.sum(axis=0)
    nz_r, nz_c = np.nonzero(counts)
    joint = counts[nz_r, nz_c].astype(np.float64)
    mi = float(
        (joint / total * (np.log(joint * total) - np.log(row[nz_r] * col[nz_c].astype(np.float64)))).sum()
    )
    mi = max(mi, 0.0)
    h_true, h_pred = _entropy(row), _entropy(col)
    normaliser = (h_true + h_pred) / 2.0
    return float(mi / max(normaliser, np.finfo(np.float64).eps))


def nmi(y_true: LabelsLike, y_pred: LabelsLike) -> float:
    """NMI = I(Y; C) / ((H(Y) + H(C)) / 2), the arithmetic normalisation (sklearn's default)."""
    counts, _, _ = contingency_matrix(y_true, y_pred)
    return _nmi_from_counts(counts)


def _ari_from_counts(counts: np.ndarray) -> float:
    n = int(counts.sum())
    row = counts.sum(axis=1).astype(np.float64)
    col = counts.sum(axis=0).astype(np.float64)
    sum_comb = float((counts.astype(np.float64) * (counts - 1)).sum() / 2)
    sum_row = float((row * (row - 1)).sum() / 2)
    sum_col = float((col * (col - 1)).sum() / 2)
    total_pairs = n * (n - 1) / 2
    # sklearn's special cases: no pairs to disagree on, or both labelings trivial in the same way
    if total_pairs == 0 or sum_row == sum_col == total_pairs or sum_row == sum_col == 0:
        return 1.0
    expected = sum_row * sum_col / total_pairs
    maximum = (sum_row + sum_col) / 2
    return float((sum_comb - expected) / (maximum - expected))


def ari(y_true: LabelsLike, y_pred: LabelsLike) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) from pair counts of the contingency matrix."""
    counts, _, _ = contingency_matrix(y_true, y_pred)
    return _ari_from_counts(counts)


def evaluate_clustering(y_true: LabelsLike, y_pred: LabelsLike) -> dict[str, float]:
    """``{"acc", "nmi", "ari"}`` from one contingency matrix."""
    counts, _, _ = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {
        "acc": float(counts[rows, cols].sum() / counts.sum()),
        "nmi": _nmi_from_counts(counts),
        "ari": _ari_from_counts(counts),
    }
