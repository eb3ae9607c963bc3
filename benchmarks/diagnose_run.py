"""Where a finished clustering run stands, and what its errors are made of (labelled datasets only).

    python benchmarks/diagnose_run.py runs/bench-fmnist-v3/cc
    python benchmarks/diagnose_run.py runs/bench-fmnist-v3/cc --pixels   # also probe the raw pixels

On the features and soft assignments of the run's last checkpoint (evaluation view), it measures:

* **linear probe**: a logistic regression on the standardised features, trained on a stratified 6/7 of the
  images and scored on the other 1/7. It is supervised, so it is not a clustering result: it says how much class
  information the features hold. With ``--pixels`` the same probe on the raw pixels is the reference.
* **confident core**: for each fraction f, the f most confident images of every cluster (by the head's maximum
  probability), and the share of them that carry the label Hungarian matching gives their cluster. This is the
  purity a self-labelling stage would start from.
* **neighbour vote**: every image takes the cluster of the largest mean head probability among its k cosine
  nearest neighbours (the ``neighbour_vote`` read-out, ``readout.neighbour_vote=k``). With ``--pixels`` also with
  the neighbours in the centred raw pixels, and in both spaces joined (unit-length features and pixels side by
  side).
* **flip test-time augmentation**: the head on the mirrored images, and on the mean of the two probabilities.
* **k-means on the features** with each backend, on raw and on L2-normalised features: inertia and metrics.
* the head's confusion matrix, columns ordered by the Hungarian matching.
* with several cluster heads (``params.num_heads``, CC and SCAN): every head's metrics and running loss, and
  which one the method reads out (the lowest running loss), to check that rule against the labels.

Writes ``<run>/diagnosis.json`` (or ``--out``) with the machine and the date, and prints the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from reread_run import cpu_autocast, extract_as_evaluated
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from deepclust.data import load_dataset
from deepclust.engine.kmeans_baseline import pixel_features
from deepclust.errors import UserError
from deepclust.evaluation import evaluate_clustering, hungarian_match, kmeans
from deepclust.evaluation.kmeans import faiss_available
from deepclust.evaluation.neighbours import neighbour_vote
from deepclust.runs.pretrained import load_run_method
from deepclust.runs.run_dir import RunDir


def linear_probe(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Test accuracy of a logistic regression on standardised features (stratified 6/7 : 1/7 split)."""
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=1 / 7, stratify=labels, random_state=seed
    )
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(max_iter=1000).fit(scaler.transform(train_x), train_y)
    return float(probe.score(scaler.transform(test_x), test_y))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Every row scaled to unit length, so that concatenated spaces weigh alike in the cosine."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def confident_core(probs: np.ndarray, labels: np.ndarray, fractions: list[float]) -> dict[str, float]:
    """Purity of the ``f`` most confident images of every cluster, under the whole clustering's matching."""
    clusters, confidence = probs.argmax(1), probs.max(1)
    mapping = hungarian_match(labels, clusters)
    correct = np.array([mapping.get(c, -1) for c in clusters]) == labels
    purity = {}
    for fraction in fractions:
        chosen = np.zeros(len(labels), dtype=bool)
        for cluster in np.unique(clusters):
            members = np.flatnonzero(clusters == cluster)
            top = members[np.argsort(-confidence[members])][: int(np.ceil(fraction * len(members)))]
            chosen[top] = True
        purity[str(fraction)] = float(correct[chosen].mean())
    return purity


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--pixels", action="store_true", help="also probe the raw pixels")
    parser.add_argument("--neighbours", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    run = RunDir.open_existing(args.run)
    cfg = run.load_config()
    num_clusters = next(int(e["num_clusters"]) for e in run.read_log() if e["event"] == "start")
    dataset = load_dataset(cfg.data.name, cfg.data.split, cfg.data.root, image_size=cfg.data.image_size)
    if dataset.labels is None:
        raise UserError(f"{cfg.data.name} has no labels to diagnose against")
    labels = dataset.labels
    method = load_run_method(str(args.run), dataset.image_shape, setting=str(args.run), data=cfg.data)
    started = time.perf_counter()
    outputs = extract_as_evaluated(args.run, method, dataset)
    features = outputs["features"]
    result: dict[str, Any] = {"run": str(args.run), "samples": len(labels)}
    print(f"{args.run}: {len(labels):,} images, {features.shape[1]}-d features")

    result["linear_probe"] = {"features": linear_probe(features, labels, cfg.seed)}
    pixels = pixel_features(dataset) if args.pixels else None
    if pixels is not None:
        result["linear_probe"]["pixels"] = linear_probe(pixels, labels, cfg.seed)
    print("linear probe accuracy:", result["linear_probe"])

    backends = ["faiss", "sklearn"] if faiss_available() else ["sklearn"]
    result["kmeans"] = {}
    for backend in backends:
        for normalize in (False, True):
            found = kmeans(
                features,
                num_clusters,
                n_init=cfg.kmeans.n_init,
                seed=cfg.seed,
                backend=backend,
                normalize=normalize,
            )
            name = f"{backend}{', normalised' if normalize else ''}"
            result["kmeans"][name] = {"inertia": found.inertia, **evaluate_clustering(labels, found.labels)}
            print(f"k-means ({name}):", {k: round(v, 4) for k, v in result["kmeans"][name].items()})

    if "head" in outputs:
        probs = outputs["head"]
        head = probs.argmax(1)
        result["head"] = evaluate_clustering(labels, head)
        result["confident_core"] = confident_core(probs, labels, args.fractions)
        print("head:", {k: round(v, 4) for k, v in result["head"].items()})
        print("confident core purity (fraction of each cluster: purity):", result["confident_core"])
        mirrored = dataclasses.replace(dataset, images=np.ascontiguousarray(dataset.images[..., ::-1]))
        mirrored_probs = extract_as_evaluated(args.run, method, mirrored)["head"]
        result["flip"] = {
            "mirrored": evaluate_clustering(labels, mirrored_probs.argmax(1)),
            "mean": evaluate_clustering(labels, (probs + mirrored_probs).argmax(1)),
            "agreement": float((mirrored_probs.argmax(1) == head).mean()),
        }
        print("flip test-time augmentation:", result["flip"])
        spaces = {"features": features}
        if pixels is not None:
            centred = pixels - pixels.mean(axis=0)
            spaces["pixels"] = centred
            spaces["features+pixels"] = np.concatenate([unit_rows(features), unit_rows(centred)], axis=1)
        result["neighbour_vote"] = {}
        for space, points in spaces.items():
            for k in args.neighbours:
                scores = evaluate_clustering(labels, neighbour_vote(probs, points, k))
                result["neighbour_vote"][f"{space}, {k}"] = scores
                print(f"vote of {k} neighbours in {space}:", {m: round(v, 4) for m, v in scores.items()})
        heads = getattr(method, "cluster_heads", [])
        if len(heads) > 1:
            inputs, running = torch.from_numpy(features), heads.running_losses.tolist()
            # under the run's precision, as its read-out head was evaluated (near-ties in an early head's
            # probabilities otherwise fall the other way)
            autocast = cpu_autocast(args.run) or contextlib.nullcontext
            result["heads"] = []
            for index, cluster_head in enumerate(heads):
                # argmax of logits (SCAN) or of probabilities (CC): the same clusters
                with torch.no_grad(), autocast():
                    scores = evaluate_clustering(labels, cluster_head(inputs).float().argmax(1).numpy())
                chosen = index == heads.best
                result["heads"].append({"running_loss": running[index], "read_out": chosen, **scores})
                print(
                    f"head {index}{' (read out)' if chosen else ''}: running loss {running[index]:.4f},",
                    {m: round(v, 4) for m, v in scores.items()},
                )
        mapping = hungarian_match(labels, head)
        order = sorted(mapping, key=lambda cluster: mapping[cluster])
        confusion = np.zeros((dataset.num_classes or labels.max() + 1, probs.shape[1]), dtype=int)
        np.add.at(confusion, (labels, head), 1)
        result["confusion"] = confusion[:, order].tolist()
        names = dataset.class_names or [str(i) for i in range(len(confusion))]
        print("confusion (rows: classes; columns: matched clusters)")
        for name, row in zip(names, result["confusion"], strict=True):
            print(f"  {name:>12} " + " ".join(f"{v:5d}" for v in row))

    result.update(
        seconds=round(time.perf_counter() - started, 1),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    out = args.out or args.run / "diagnosis.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:  # a path that is not a run, a dataset without labels: one line, exit 2
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
