"""Inter-cluster distance of a SIC run over its epochs, as the paper's Fig. 2.

SIC logs the mean pairwise Euclidean distance between its K cluster centres at the start of every epoch (an
``epoch_start`` event with ``centre_distance`` in ``log.jsonl``; epoch 0 is the k-means initialisation). This
plots it against the epoch, with the ACC and NMI of the run's evaluations (``eval`` events, read-outs ``head``
and ``kmeans``) on a second axis where there are any, and prints the values as a Markdown table.

    python benchmarks/sic_centre_distance.py runs/sic-cifar10 --out figures/sic_centre_distance.png
    deepclust train --method sic --dataset digits --out /tmp/sic train.eval_every_epochs=1 && \\
        python benchmarks/sic_centre_distance.py /tmp/sic --out /tmp/sic/centre_distance.png

An ``eval`` event's ``epoch`` counts the epochs done, and so does an ``epoch_start`` event's: both are drawn at
that number of epochs. Without ``--out`` the figure is ``<RUN_DIR>/centre_distance.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from run_events import epoch_values, evaluations, overlay_metrics_and_save

from deepclust.errors import UserError
from deepclust.runs.run_dir import RunDir

READOUTS = ("head", "kmeans")


def centre_distances(events: list[dict[str, Any]]) -> dict[int, float]:
    """epoch -> the centre distance logged at its start."""
    return {
        epoch: float(e["centre_distance"]) for epoch, e in epoch_values(events, "centre_distance").items()
    }


def plot(
    distances: dict[int, float], metrics: dict[str, dict[int, dict[str, float]]], title: str, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axis = plt.subplots(figsize=(6.5, 4))
    epochs = sorted(distances)
    axis.plot(
        epochs, [distances[e] for e in epochs], color="black", marker=".", label="inter-cluster distance"
    )
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("mean distance between centres")
    overlay_metrics_and_save(fig, axis, metrics, title, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a SIC run directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="the figure (PNG); default RUN/centre_distance.png"
    )
    args = parser.parse_args()

    run = RunDir.open_existing(args.run)
    events = run.read_log()
    distances = centre_distances(events)
    if not distances:
        raise UserError(f"{args.run}: no centre distances in its log.jsonl (a SIC run logs one every epoch)")
    metrics = evaluations(events, READOUTS)
    cfg = run.load_config()
    title = f"{cfg.get('method', 'sic')} on {cfg.get('data', {}).get('name', '?')}: inter-cluster distance"
    out = args.out or args.run / "centre_distance.png"
    plot(distances, metrics, title, out)
    print("| epoch | centre distance |")
    print("|---:|---:|")
    for epoch in sorted(distances):
        print(f"| {epoch} | {distances[epoch]:.4f} |")
    print(f"figure written to {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:  # a path that is not a run, a run without centre distances: one line, exit 2
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
