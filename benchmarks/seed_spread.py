"""Mean, standard deviation and range of the final metrics over several runs of one config (other seeds).

Reads ``metrics.json`` of every run directory given and prints a Markdown table with, for every read-out, the
number of runs that have it and ACC / NMI / ARI as mean ± sample standard deviation (min–max):

    python benchmarks/seed_spread.py runs/bench-fmnist-v5/cc runs/bench-fmnist-v8-seed1/cc \\
        runs/bench-fmnist-v10-seed2/cc runs/bench-fmnist-v10-seed3/cc runs/bench-fmnist-v10-seed4/cc

A read-out that only some runs report (one added to the config after the others ran) is summarised over those
runs, and its row says how many.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from deepclust.errors import UserError
from deepclust.runs.run_dir import RunDir

METRICS = ("acc", "nmi", "ari")


def read_readouts(run: Path) -> dict[str, dict[str, float]]:
    """The read-outs of an evaluated run: ``{read-out: {metric: value}}``; one line and exit 2 if it is not one."""
    try:
        readouts = RunDir.open_existing(run).read_metrics()["readouts"]
    except UserError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    if not readouts or any(set(METRICS) - set(values) for values in readouts.values()):
        print(f"{run}: its read-outs have no ACC / NMI / ARI (data without labels)", file=sys.stderr)
        raise SystemExit(2)
    return readouts


def spread(values: list[float]) -> str:
    """``mean ± std (min–max)``; a single value alone."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return (
        f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} "
        f"({min(values):.4f}–{max(values):.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of the same config")
    args = parser.parse_args()
    per_run = [read_readouts(run) for run in args.runs]
    names = sorted({name for readouts in per_run for name in readouts})
    print("| read-out | runs | ACC | NMI | ARI |")
    print("|---|---|---|---|---|")
    for name in names:
        found = [readouts[name] for readouts in per_run if name in readouts]
        cells = [spread([values[key] for values in found]) for key in METRICS]
        print(f"| {name} | {len(found)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
