"""Quality under a fixed CPU budget: train each learner on all 70,000 Fashion-MNIST images for N minutes.

For every method this runs ``deepclust train --method M --dataset fashion-mnist --time-budget N`` (the CPU
defaults of ``configs/<method>/fashion-mnist.yaml``), then reads the run directory: the final metrics of every
read-out and the learning curve (metric against wall-clock time) from the ``eval`` events of ``log.jsonl``.

    python benchmarks/fmnist_budget.py --minutes 30 --methods cc simclr byol swav
    python benchmarks/fmnist_budget.py --minutes 2 --methods cc train.eval_every_epochs=1   # a smoke run

Writes ``<out>/results.json`` and ``<out>/learning_curve.png`` and prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_method(method: str, minutes: float, out: Path, overrides: list[str]) -> dict[str, Any]:
    run = out / method
    command = [
        sys.executable,
        "-m",
        "deepclust.cli",
        "train",
        "--method",
        method,
        "--dataset",
        "fashion-mnist",
        "--time-budget",
        str(minutes),
        "--out",
        str(run),
        *overrides,
    ]
    print("$", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    t0 = next(e["time"] for e in events if e["event"] in ("start", "train"))
    curve = []
    for event in events:
        if event["event"] == "eval" and "readouts" in event:
            primary = event.get("primary", metrics["primary"])
            values = event["readouts"].get(primary, {})
            curve.append(
                {"minutes": round((event["time"] - t0) / 60, 2), "step": event.get("step"), **values}
            )
    throughput = [e["images_per_s"] for e in events if e["event"] == "train" and "images_per_s" in e]
    data_share = [e["data_share"] for e in events if e["event"] == "train" and "data_share" in e]
    return {
        "method": method,
        "wall_minutes": round((time.time() - started) / 60, 2),
        "metrics": metrics,
        "curve": curve,
        "median_images_per_s": sorted(throughput)[len(throughput) // 2] if throughput else None,
        "median_data_share": sorted(data_share)[len(data_share) // 2] if data_share else None,
        "run_dir": str(run),
    }


def plot(results: list[dict[str, Any]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        xs = [p["minutes"] for p in result["curve"]]
        for axis, key in zip(axes, ("acc", "nmi"), strict=True):
            axis.plot(xs, [p.get(key) for p in result["curve"]], marker="o", label=result["method"])
    for axis, key in zip(axes, ("ACC", "NMI"), strict=True):
        axis.set_xlabel("training wall-clock minutes")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle("Fashion-MNIST (70k), 2 CPU cores")
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--methods", nargs="+", default=["cc", "simclr", "byol", "swav"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fmnist-budget"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides passed to every run")
    args = parser.parse_args()
    # `--methods cc key=value` hands the override to --methods, which takes every word after it
    args.overrides = [*args.overrides, *(m for m in args.methods if "=" in m)]
    args.methods = [m for m in args.methods if "=" not in m]
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_method(m, args.minutes, args.out, args.overrides) for m in args.methods]
    summary = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "minutes": args.minutes,
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.out / "learning_curve.png")
    print("\n| method | read-out | ACC | NMI | ARI | images/s | data share |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for name, values in r["metrics"]["readouts"].items():
            cells = [f"{values[k]:.4f}" if k in values else "-" for k in ("acc", "nmi", "ari")]
            ips = f"{r['median_images_per_s']:.0f}" if r["median_images_per_s"] else "-"
            share = f"{r['median_data_share']:.1%}" if r["median_data_share"] is not None else "-"
            print(f"| {r['method']} | {name} | {' | '.join(cells)} | {ips} | {share} |")
    print(f"\nresults in {args.out}/results.json, curve in {args.out}/learning_curve.png")


if __name__ == "__main__":
    main()
