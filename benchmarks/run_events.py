"""Curves read from a run's ``log.jsonl``: a value every epoch logs at its start, and each read-out's metrics at
every evaluation (shared by the plotting scripts)."""

from __future__ import annotations

from collections.abc import Sequence
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
