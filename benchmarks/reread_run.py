"""Read finished runs out again from their last checkpoint, with other read-out settings (labelled data only).

    python benchmarks/reread_run.py runs/bench-fmnist-v11-heads5-seed0/cc runs/bench-fmnist-v11-heads5-seed1/cc \\
        --neighbour-vote 20 --balanced
    python benchmarks/reread_run.py runs/bench-fmnist-v11-heads5-seed0/cc --purity 10 20 50 100 200 500

For every run it rebuilds the method from ``config.yaml`` and ``checkpoints/last.pt``, extracts the features and
probabilities of the whole dataset as the trainer's evaluation does (under the precision its log recorded: bf16
autocast on a CPU with bf16 instructions), and computes the read-outs with the run's own ``kmeans`` settings and
seed, plus ``--neighbour-vote K`` and ``--balanced`` (``readout.neighbour_vote`` and ``readout.balanced``).
The read-outs the run already had come out as in its ``metrics.json``, which checks the re-read. ``--purity K
...`` also runs k-means with K clusters on the same features (the run's ``kmeans`` settings and seed) and reports
each partition's purity, which bounds the ACC of any merge of its clusters: how fine a partition of these
features must be before its clusters are as pure as a target ACC.

Prints every run's metrics and, for several runs, mean ± std (min–max) per read-out over the runs that have it;
writes ``<run>/reread.json`` with the settings, the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from seed_spread import METRICS, spread

from deepclust.config import build_config
from deepclust.data import ArrayDataset, load_dataset
from deepclust.errors import UserError
from deepclust.evaluation import kmeans, purity
from deepclust.evaluation.readout import ReadoutConfig, compute_readouts, extract, precision_autocast
from deepclust.methods.base import Method
from deepclust.runs.pretrained import load_run_method
from deepclust.runs.run_dir import RunDir


def load_labelled_run(run_path: Path) -> tuple[DictConfig, ArrayDataset, Method]:
    """A finished run's configuration, its labelled dataset and its method filled from ``checkpoints/last.pt``;
    every problem is one :class:`UserError` that names the run."""
    cfg = build_config(config_file=RunDir.open_existing(run_path).path / "config.yaml")
    data = cfg.data
    dataset = load_dataset(data.name, data.split, data.root, image_size=data.image_size)
    if dataset.labels is None:
        raise UserError(f"{run_path}: {data.name} ({data.split}) has no labels to score against")
    method = load_run_method(str(run_path), dataset.image_shape, setting=str(run_path), data=data)
    return cfg, dataset, method


def cpu_autocast(run_path: Path) -> Callable[[], Any] | None:
    """The autocast the run's own evaluations used (bf16 on a CPU with bf16 instructions), for the CPU."""
    return precision_autocast(RunDir.open_existing(run_path).precision(), torch.device("cpu"))


def extract_as_evaluated(run_path: Path, method: Method, dataset: ArrayDataset) -> dict[str, np.ndarray]:
    """Every image's features (and probabilities) on the CPU, under the precision of the run's evaluations, so
    that its read-outs come out as in its ``metrics.json``."""
    return extract(method, dataset, torch.device("cpu"), autocast=cpu_autocast(run_path))


def reread(
    run_path: Path, neighbour_vote_k: int, balanced: bool, purity_ks: list[int]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """One run's last checkpoint read out with the given settings: ``{read-out: {metric: value}}``, and the
    purity of k-means with each of ``purity_ks`` clusters on its features (keys are the K as strings)."""
    cfg, dataset, method = load_labelled_run(run_path)
    outputs = extract_as_evaluated(run_path, method, dataset)
    result = compute_readouts(
        outputs,
        dataset.labels,
        method.num_clusters,
        cfg.kmeans,
        cfg.seed,
        options=ReadoutConfig(neighbour_vote=neighbour_vote_k, balanced=balanced),
        dataset_readouts=method.dataset_readouts(outputs),
        primary=method.primary_readout,
    )
    km = cfg.kmeans
    purities = {}
    for k in purity_ks:
        partition = kmeans(
            outputs["features"],
            k,
            n_init=km.n_init,
            max_iter=km.max_iter,
            seed=cfg.seed,
            backend=km.backend,
            normalize=km.normalize,
        )
        purities[str(k)] = purity(dataset.labels, partition.labels)
    return result.metrics, purities


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument(
        "--neighbour-vote", type=int, default=0, metavar="K", help="as readout.neighbour_vote"
    )
    parser.add_argument("--balanced", action="store_true", help="as readout.balanced=true")
    parser.add_argument(
        "--purity", type=int, nargs="+", default=[], metavar="K", help="purity of k-means with K clusters"
    )
    args = parser.parse_args()
    if args.neighbour_vote < 0:
        parser.error("--neighbour-vote must be 0 (off) or a number of neighbours")
    if any(k < 2 for k in args.purity):
        parser.error("--purity needs numbers of clusters of at least 2")
    per_run = []
    for run in args.runs:
        started = time.time()
        try:
            readouts, purities = reread(run, args.neighbour_vote, args.balanced, args.purity)
        except UserError as error:
            print(error, file=sys.stderr)
            raise SystemExit(2) from None
        per_run.append(readouts)
        record = {
            "run": str(run),
            "neighbour_vote": args.neighbour_vote,
            "balanced": args.balanced,
            "readouts": readouts,
            "kmeans_purity": purities,
            "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), "
            f"{torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        (run / "reread.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{run} ({time.time() - started:.0f} s), written to {run / 'reread.json'}")
        for name, values in readouts.items():
            print(f"  {name:24s} " + "  ".join(f"{key.upper()} {values[key]:.4f}" for key in METRICS))
        for k, value in purities.items():
            print(f"  k-means with {k} clusters: purity {value:.4f}")
    if len(per_run) > 1:
        # a read-out that only some runs have (a method without a cluster head) is summarised over those
        print("\n| read-out | runs | ACC | NMI | ARI |\n|---|---|---|---|---|")
        for name in sorted({name for readouts in per_run for name in readouts}):
            found = [readouts[name] for readouts in per_run if name in readouts]
            cells = [spread([values[key] for values in found]) for key in METRICS]
            print(f"| {name} | {len(found)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
