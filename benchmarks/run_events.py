"""Curves read from a run's ``log.jsonl``: a value every epoch logs at its start, and each read-out's metrics at
every evaluation, and the figure that overlays the metrics (shared by the plotting scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def epoch_values(events: list[dict[str, Any]], key: str) -> dict[int, dict[str, Any]]:
    """epoch -> the ``epoch_start`` event that logged ``key`` (the last one, when a resume logged it twice)."""
    return {int(e["epoch"]): e for e in events if e.get("event") == "epoch_start" and key in e}


def evaluations(
    events: list[dict[str, Any]], readouts: Sequence[str]
) -> dict[str, dict[int, dict[str, float]]]:
    """read-out -> epochs done -> its metrics, from the ``eval`` events that have labels' metrics."""
    found: dict[str, dict[int, dict[str, float]]] = {}
    for event in events:
        if event.get("event") != "eval" or "epoch" not in event:
            continue
        for name, values in (event.get("readouts") or {}).items():
            if name in readouts and values:
                found.setdefault(name, {})[int(event["epoch"])] = values
    return found


def overlay_metrics_and_save(
    fig: Any, axis: Any, metrics: dict[str, dict[int, dict[str, float]]], title: str, out: Path
) -> None:
    """Each read-out's ACC and NMI per epoch on a second axis of ``axis``, one legend for both axes, and the
    figure written to ``out`` (PNG) and closed."""
    import matplotlib.pyplot as plt

    handles, labels = axis.get_legend_handles_labels()
    if metrics:
        scores = axis.twinx()
        first_colour = len(handles)  # not the colour of a curve on the first axis
        for index, (name, per_epoch) in enumerate(sorted(metrics.items())):
            done = sorted(per_epoch)
            for metric, style, marker in (("acc", "--", "o"), ("nmi", ":", "s")):
                values = [per_epoch[e].get(metric) for e in done]
                label = f"{metric.upper()} ({name})"
                scores.plot(done, values, style, color=f"C{first_colour + index}", marker=marker, label=label)
        scores.set_ylabel("ACC / NMI")
        scores.set_ylim(0, 1.05)
        more_handles, more_labels = scores.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.legend(handles, labels, loc="lower right", fontsize="small")
    axis.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
