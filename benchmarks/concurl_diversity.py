"""The diversity of ConCURL's ensemble over training, as the paper's Fig. 1 (Section III-B).

ConCURL logs, at the start of every epoch, the mean and standard deviation of the NMI between every pair of its M
ensemble members' clusterings of a fixed subsample (an ``epoch_start`` event with ``ensemble_nmi_mean`` and
``ensemble_nmi_std`` in ``log.jsonl``). This plots the mean against the epoch with a band of ± one standard
deviation, with the ACC and NMI of the run's evaluations (``eval`` events, read-outs ``codes`` and ``kmeans``)
on a second axis where there are any, and prints the values as a Markdown table. Several runs (e.g. Table V's
projection dimensions) can be drawn in one figure, each labelled by its directory name.

    python benchmarks/concurl_diversity.py runs/concurl-stl10 --out figures/concurl_diversity.png
    deepclust train --method concurl --dataset digits --out /tmp/concurl train.eval_every_epochs=1 && \\
        python benchmarks/concurl_diversity.py /tmp/concurl --out /tmp/concurl/diversity.png

An ``epoch_start`` event's ``epoch`` counts the epochs done before it, and so does an ``eval`` event's: both are
drawn at that number of epochs. Without ``--out`` the figure is ``<first RUN_DIR>/diversity.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from run_events import epoch_values, evaluations, overlay_metrics_and_save

from deepclust.errors import UserError
from deepclust.runs.run_dir import RunDir

READOUTS = ("codes", "kmeans")


def diversity(events: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """epoch -> (mean, std) of the pairwise NMI logged at its start."""
    return {
        epoch: (float(e["ensemble_nmi_mean"]), float(e.get("ensemble_nmi_std", 0.0)))
        for epoch, e in epoch_values(events, "ensemble_nmi_mean").items()
    }


def plot(
    curves: dict[str, dict[int, tuple[float, float]]],
    metrics: dict[str, dict[int, dict[str, float]]],
    title: str,
    out: Path,
) -> None:
    """The pairwise-NMI curve of every run (mean ± std), and the first run's metrics on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axis = plt.subplots(figsize=(6.5, 4))
    for label, values in curves.items():
        epochs = sorted(values)
        means = [values[e][0] for e in epochs]
        stds = [values[e][1] for e in epochs]
        (line,) = axis.plot(epochs, means, marker=".", label=f"pairwise NMI ({label})")
        axis.fill_between(
            epochs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=line.get_color(),
            alpha=0.2,
        )
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("pairwise NMI of the ensemble")
    axis.set_ylim(0, 1.05)
    overlay_metrics_and_save(fig, axis, metrics, title, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="ConCURL run directories")
    parser.add_argument(
        "--out", type=Path, default=None, help="the figure (PNG); default <first RUN_DIR>/diversity.png"
    )
    args = parser.parse_args()

    curves: dict[str, dict[int, tuple[float, float]]] = {}
    metrics: dict[str, dict[int, dict[str, float]]] = {}
    for path in args.runs:
        events = RunDir.open_existing(path).read_log()
        values = diversity(events)
        if not values:
            raise UserError(
                f"{path}: no ensemble NMI in its log.jsonl (a ConCURL run with prototypes logs one every epoch)"
            )
        curves[path.name] = values
        if len(args.runs) == 1:
            metrics = evaluations(events, READOUTS)
    cfg = RunDir.open_existing(args.runs[0]).load_config()
    dataset = cfg.get("data", {}).get("name", "?")
    title = f"{cfg.get('method', 'concurl')} on {dataset}: diversity of the ensemble"
    out = args.out or args.runs[0] / "diversity.png"
    plot(curves, metrics, title, out)
    for label, values in curves.items():
        print(f"{label}\n\n| epoch | pairwise NMI mean | std |")
        print("|---:|---:|---:|")
        for epoch in sorted(values):
            mean, std = values[epoch]
            print(f"| {epoch} | {mean:.4f} | {std:.4f} |")
        print()
    print(f"figure written to {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:  # a path that is not a run, a run without the ensemble NMI: one line, exit 2
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
