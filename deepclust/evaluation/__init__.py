"""Evaluation: clustering metrics, k-means, and the read-outs of trained methods."""

from deepclust.evaluation.kmeans import KMeansResult, assign_to_centroids, kmeans
from deepclust.evaluation.metrics import (
    ari,
    cluster_accuracy,
    contingency_matrix,
    evaluate_clustering,
    hungarian_match,
    nmi,
    purity,
)

__all__ = [
    "KMeansResult",
    "ari",
    "assign_to_centroids",
    "cluster_accuracy",
    "contingency_matrix",
    "evaluate_clustering",
    "hungarian_match",
    "kmeans",
    "nmi",
    "purity",
]
