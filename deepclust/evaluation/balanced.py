"""Equal-size read-out: a cluster head's probabilities rescaled so that every cluster holds 1/K of the samples."""

from __future__ import annotations

import numpy as np
import torch

from deepclust.losses.sinkhorn import sinkhorn

# Sinkhorn rounds of the read-out: enough for near-equal sizes on trained heads
# (benchmarks/notes/2026-11-29-feature-diagnosis-and-read-outs.md)
BALANCED_ITERATIONS = 100


def balanced_assignment(probs: np.ndarray, iterations: int = BALANCED_ITERATIONS) -> np.ndarray:
    """Cluster per sample after rescaling ``probs`` (N×K) towards equal cluster sizes.

    This is the transport plan SeLa (Asano et al. 2020, Eq. 6) and SwAV (Caron et al. 2020, Eq. 3) compute for
    their codes, with the head's log-probabilities as scores at ε = 1: ``Q = Diag(v) P Diag(u)``, rescaled by
    Sinkhorn-Knopp until every cluster carries 1/K of the mass and every sample 1/N, then the argmax of each
    row. A sample changes cluster only where its odds between two clusters are closer than the ratio of their
    scales ``u``, so confident assignments stay. The mass is balanced; the sizes after the argmax are equal only
    as far as the head is confident (a near-uniform head, early in training, can leave them unequal). Harder
    plans (smaller ε) read no better (benchmarks/notes/2026-11-29-feature-diagnosis-and-read-outs.md).

    It assumes that the classes are about equally frequent, the prior CC's entropy term also encodes. It uses
    no labels and is transductive: a new image needs the scales of the clustered set. A cluster to which the head
    gives no probability anywhere stays empty (its share of the mass is spread evenly over the samples and wins
    no argmax), so a head that has emptied clusters reads out as it is, without error.
    """
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"expected N×K probabilities with K ≥ 2, got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    # clipped so that log(0) stays finite; exp(log p) gives back p, and a zero stays (numerically) zero
    scores = torch.from_numpy(np.log(np.clip(probs.astype(np.float32), 1e-30, None)))
    return sinkhorn(scores, epsilon=1.0, iterations=iterations).argmax(dim=1).numpy()
