"""k-means on raw pixels of all 70,000 Fashion-MNIST images, over several seeds (the papers' k-means row).

    python benchmarks/kmeans_fashion_mnist.py --seeds 0 1 2 3 4 --n-init 10 --backend auto

Prints ACC / NMI / ARI per seed and their mean ± std, and writes ``--out`` (JSON) with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from deepclust.data import load_dataset
from deepclust.engine.kmeans_baseline import pixel_features
from deepclust.evaluation import evaluate_clustering, kmeans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-kmeans-fmnist/results.json"))
    args = parser.parse_args()

    dataset = load_dataset("fashion-mnist", split="all")
    features = pixel_features(dataset)
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        result = kmeans(features, 10, n_init=args.n_init, seed=seed, backend=args.backend)
        seconds = time.perf_counter() - started
        metrics = evaluate_clustering(dataset.labels, result.labels)
        rows.append({"seed": seed, **metrics, "seconds": round(seconds, 1), "backend": result.backend})
        print(
            f"seed {seed}: ACC {metrics['acc']:.4f}  NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}  "
            f"({seconds:.0f} s, {result.backend})",
            flush=True,
        )
    summary = {
        key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
        for key in ("acc", "nmi", "ari")
    }
    for key, value in summary.items():
        print(f"{key}: {value['mean']:.4f} ± {value['std']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "samples": len(dataset),
        "n_init": args.n_init,
        "runs": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
