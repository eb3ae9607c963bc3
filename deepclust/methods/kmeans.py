"""The k-means baseline: cluster raw pixels (the papers' "k-means" row) or the features of a trained run.

It is not trained: ``deepclust train --method kmeans`` runs :func:`deepclust.engine.kmeans_baseline.run_kmeans`."""

from __future__ import annotations

from typing import ClassVar

from deepclust.methods.base import MethodSpec


class KMeansBaseline(MethodSpec):
    """The registry's entry for k-means: not trained (``trainable`` is false), so the CLI runs the baseline."""

    trainable: ClassVar[bool] = False
