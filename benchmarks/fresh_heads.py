"""Do new cluster heads find a better partition on a finished CC run's features? (labelled datasets only)

    python benchmarks/fresh_heads.py runs/bench-fmnist-v11-heads5-seed0/cc --views 6 --epochs 8 --heads 8
    python benchmarks/fresh_heads.py runs/bench-fmnist-v11-heads5-seed0/cc --heads 3 --clusters 20 30 50

The run's backbone is frozen (evaluation mode). Every image is augmented ``--views`` times with the run's own
pipeline and passed through it once per view; then ``--heads`` new cluster heads (CC's ``g_C``, newly
initialised) are trained for ``--epochs`` epochs with CC's cluster loss (column contrast plus entropy term, the
run's ``τ_C``, entropy variant and weight; Adam at 1e-3, batch 256) on two different stored views of each image.
After every epoch each head's argmax on the un-augmented images is scored (ACC, NMI, ARI and purity). If the
heads all end where the run's own head did, the partition is set by the features, not by how the heads were
trained. ``--clusters K ...`` trains ``--heads`` over-clustering heads with K outputs for each K instead of the
run's number of clusters; their purity bounds what any merge of their clusters could reach.

Prints the table and writes ``<run>/fresh_heads.json`` (or ``--out``) with the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from reread_run import cpu_autocast, extract_as_evaluated, load_labelled_run

from deepclust.config import build_config
from deepclust.errors import UserError
from deepclust.evaluation import evaluate_clustering, purity
from deepclust.losses import cc_entropy_term, cluster_contrastive_loss
from deepclust.models import ClusterHead
from deepclust.runs.run_dir import RunDir

BATCH = 256


@torch.no_grad()
def augmented_features(
    method: torch.nn.Module, images: np.ndarray, views: int, autocast: Callable[[], Any] | None = None
) -> torch.Tensor:
    """``views``×N×d backbone features of augmented copies of every image (two views per augmenter call), in
    float32, the backbone run under ``autocast`` when given (the run's precision)."""
    stored: list[torch.Tensor] = []
    while len(stored) < views:
        parts: list[list[torch.Tensor]] = [[], []]
        for start in range(0, len(images), 1024):
            # a copy: torch.from_numpy warns on the dataset's read-only memory map
            batch = torch.from_numpy(np.array(images[start : start + 1024]))
            for part, view in zip(parts, method.views(batch)[:2], strict=True):
                with autocast() if autocast is not None else contextlib.nullcontext():
                    part.append(method.backbone(view).float())
        stored.extend(torch.cat(part) for part in parts)
    return torch.stack(stored[:views])


def scores(probs: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """ACC / NMI / ARI and purity of the argmax of N×K probabilities."""
    clusters = probs.argmax(1).numpy()
    return {**evaluate_clustering(labels, clusters), "purity": purity(labels, clusters)}


def train_heads(
    stored: torch.Tensor,
    clean: torch.Tensor,
    labels: np.ndarray,
    num_clusters: int,
    params: Any,
    args: argparse.Namespace,
    started: float,
) -> list[list[dict[str, float]]]:
    """``args.heads`` new heads with ``num_clusters`` outputs trained on pairs of the stored views; per epoch, the
    scores of every head on the clean features."""
    heads = torch.nn.ModuleList(
        ClusterHead(clean.shape[1], num_clusters, hidden_dim=params.hidden_dim) for _ in range(args.heads)
    )
    optimiser = torch.optim.Adam(heads.parameters(), lr=1e-3)
    history = []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(clean))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[start : start + BATCH]
            first, second = torch.randperm(args.views)[:2].tolist()
            loss = torch.zeros(())
            for head in heads:
                c_a, c_b = head(stored[first, rows]), head(stored[second, rows])
                loss = loss + cluster_contrastive_loss(c_a, c_b, params.cluster_temperature)
                loss = loss + params.entropy_weight * cc_entropy_term(
                    c_a, c_b, variant=params.entropy_variant
                )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            history.append([scores(head(clean), labels) for head in heads])
        accs = " ".join(f"{s['acc']:.4f}" for s in history[-1])
        purities = " ".join(f"{s['purity']:.4f}" for s in history[-1])
        print(f"epoch {epoch}: ACC {accs}; purity {purities} ({time.time() - started:.0f} s)", flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished cc run directory")
    parser.add_argument("--views", type=int, default=6, help="augmented copies of every image (≥ 2)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument(
        "--clusters", type=int, nargs="+", default=None, metavar="K", help="default: the run's"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.views < 2 or args.epochs < 1 or args.heads < 1 or min(args.clusters or [2]) < 2:
        parser.error("--views and --clusters must be at least 2, --epochs and --heads at least 1")
    try:
        method_name = build_config(config_file=RunDir.open_existing(args.run).path / "config.yaml").method
        if method_name != "cc":
            raise UserError(f"{args.run}: a {method_name} run; fresh heads are CC's cluster heads")
        cfg, dataset, method = load_labelled_run(args.run)
    except UserError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    torch.manual_seed(args.seed)
    method.eval()
    started = time.time()
    outputs = extract_as_evaluated(args.run, method, dataset)
    clean = torch.from_numpy(outputs["features"])
    stored = augmented_features(method, dataset.images, args.views, cpu_autocast(args.run))
    print(
        f"{args.views} augmented views of {len(clean)} images through the frozen backbone: "
        f"{time.time() - started:.0f} s",
        flush=True,
    )
    histories = {}
    for k in args.clusters or [method.num_clusters]:
        print(f"{args.heads} new heads with {k} clusters:", flush=True)
        histories[str(k)] = train_heads(stored, clean, dataset.labels, k, cfg.params, args, started)
    run_head = scores(torch.from_numpy(outputs["head"]), dataset.labels)
    print(f"the run's own head: ACC {run_head['acc']:.4f} NMI {run_head['nmi']:.4f}")
    out = args.out or args.run / "fresh_heads.json"
    record = {
        "run": str(args.run),
        "settings": {k: getattr(args, k) for k in ("views", "epochs", "heads", "seed", "clusters")},
        "run_head": run_head,
        "epochs": histories,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
