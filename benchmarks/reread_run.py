"""Read finished runs out again from their last checkpoint, with other read-out settings (labelled data only).

    python benchmarks/reread_run.py runs/bench-fmnist-v11-heads5-seed0/cc runs/bench-fmnist-v11-heads5-seed1/cc \\
        --neighbour-vote 20 --balanced

For every run it rebuilds the method from ``config.yaml`` and ``checkpoints/last.pt``, extracts the features and
probabilities of the whole dataset as the trainer's evaluation does, and computes the read-outs with the run's
own ``kmeans`` settings and seed, plus ``--neighbour-vote K`` and ``--balanced`` (``train.neighbour_vote`` and
``train.balanced_readout``). The read-outs the run already had come out as in its ``metrics.json``, which checks
the re-read. Prints every run's metrics and, for several runs, mean ± std (min–max) per read-out; writes
``<run>/reread.json`` with the settings, the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from seed_spread import METRICS, spread

from deepclust.config import build_config
from deepclust.data import load_dataset
from deepclust.engine.run_dir import RunDir
from deepclust.errors import UserError
from deepclust.evaluation.readout import compute_readouts, extract
from deepclust.methods.pretrained import load_pretrained_method


def reread(run_path: Path, neighbour_vote_k: int, balanced: bool) -> dict[str, dict[str, float]]:
    """The read-outs of one run's last checkpoint with the given settings: ``{read-out: {metric: value}}``."""
    cfg = build_config(config_file=RunDir.open_existing(run_path).path / "config.yaml")
    data = cfg.data
    dataset = load_dataset(data.name, data.split, data.root, image_size=data.image_size)
    if dataset.labels is None:
        raise UserError(f"{run_path}: {data.name} ({data.split}) has no labels to score against")
    method = load_pretrained_method(str(run_path), data, dataset.image_shape, None, setting=str(run_path))
    outputs = extract(method, dataset, torch.device("cpu"))
    result = compute_readouts(
        outputs,
        dataset.labels,
        method.num_clusters,
        cfg.kmeans,
        cfg.seed,
        neighbour_vote_k=neighbour_vote_k,
        balanced=balanced,
    )
    return result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--neighbour-vote", type=int, default=0, metavar="K", help="as train.neighbour_vote")
    parser.add_argument("--balanced", action="store_true", help="as train.balanced_readout=true")
    args = parser.parse_args()
    if args.neighbour_vote < 0:
        parser.error("--neighbour-vote must be 0 (off) or a number of neighbours")
    per_run = []
    for run in args.runs:
        started = time.time()
        try:
            readouts = reread(run, args.neighbour_vote, args.balanced)
        except UserError as error:
            print(error, file=sys.stderr)
            raise SystemExit(2) from None
        per_run.append(readouts)
        record = {
            "run": str(run),
            "neighbour_vote": args.neighbour_vote,
            "balanced": args.balanced,
            "readouts": readouts,
            "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), "
            f"{torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        (run / "reread.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{run} ({time.time() - started:.0f} s), written to {run / 'reread.json'}")
        for name, values in readouts.items():
            print(f"  {name:24s} " + "  ".join(f"{key.upper()} {values[key]:.4f}" for key in METRICS))
    if len(per_run) > 1:
        print("\n| read-out | runs | ACC | NMI | ARI |\n|---|---|---|---|---|")
        for name in per_run[0]:
            cells = [spread([readouts[name][key] for readouts in per_run]) for key in METRICS]
            print(f"| {name} | {len(per_run)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
