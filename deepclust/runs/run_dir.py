"""The run directory: everything a run produces, in files a person or a script can read.

Layout::

    <run>/config.yaml        the full resolved configuration
    <run>/log.jsonl          one JSON object per event (losses, learning rate, throughput, evaluations)
    <run>/metrics.json       {"acc", "nmi", "ari"} of the primary read-out, "primary", and "readouts": {name: {...}}
    <run>/assignments.csv    one row per sample: id, label (when known), cluster (primary) and confidence,
                             then cluster_<readout> for every other read-out
    <run>/checkpoints/       last.pt (resume), best.pt (best primary metric), written atomically
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from deepclust.config import load_yaml, to_yaml
from deepclust.errors import UserError

ASSIGNMENTS = "assignments.csv"
METRICS = "metrics.json"
CONFIG = "config.yaml"
LOG = "log.jsonl"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: a crash mid-write never leaves a truncated file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """A run's output folder; created on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def open_existing(cls, path: str | Path) -> RunDir:
        """An existing run directory (for ``evaluate``/``--resume``); a UserError when it is not one."""
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"run directory not found: {run.path}")
        if not (run.path / CONFIG).is_file():
            raise UserError(f"{run.path} is not a deepclust run directory (no {CONFIG})")
        return run

    def create(self) -> RunDir:
        """Make the directory and its ``checkpoints/``; a path that cannot be one is a :class:`UserError`."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(exist_ok=True)
        except FileExistsError:
            raise UserError(
                f"cannot create run directory {self.path}: a file of that name is in the way"
            ) from None
        except OSError as err:
            raise UserError(f"cannot create run directory {self.path}: {err.strerror}") from None
        return self

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.pt``: the state a ``--resume`` continues from."""
        return self.checkpoint_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        """``checkpoints/best.pt``: the state of the evaluation with the best ACC (label-based selection)."""
        return self.checkpoint_dir / "best.pt"

    def save_config(self, cfg: DictConfig) -> Path:
        target = self.path / CONFIG
        atomic_write_text(target, to_yaml(cfg))
        return target

    def load_config(self) -> DictConfig:
        return load_yaml(self.path / CONFIG)

    def log(self, event: str, **fields: Any) -> None:
        """Append one event to ``log.jsonl`` (a wall-clock ``time`` is added)."""
        record = {"event": event, "time": round(time.time(), 3), **fields}
        line = (json.dumps(record, default=_json_default) + "\n").encode()
        with open(self.path / LOG, "a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            if end:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":
                    # a kill mid-append left a cut-short last line: start a fresh one, or this event (often
                    # the ``start`` of a ``--resume``) would be glued to it and lost with it
                    line = b"\n" + line
            handle.write(line)

    def read_log(self) -> list[dict[str, Any]]:
        """Every event in ``log.jsonl``, oldest first; ``[]`` when there is no log.

        Lines that are not a JSON object are skipped without a word: a kill mid-append cuts the last line
        short, and a ``--resume`` then goes on after it, so such a line is an expected trace of an interrupted
        run, not damage worth stopping (or warning) for. Every caller looks for events, never for a count.
        """
        path = self.path / LOG
        if not path.is_file():
            return []
        events: list[dict[str, Any]] = []
        # errors="replace": a stray byte only spoils its own line, which is then skipped as not JSON
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def precision(self) -> str | None:
        """The precision Fabric trained and evaluated with (``32-true``, ``bf16-mixed``, ...), as the run's last
        start event recorded it; ``None`` when the log has none."""
        started = [event for event in self.read_log() if event.get("event") == "start"]
        return started[-1].get("precision") if started else None

    def write_metrics(self, readouts: Mapping[str, Mapping[str, float]], primary: str, **extra: Any) -> Path:
        """``metrics.json``: the primary read-out's acc/nmi/ari at top level, every read-out by name."""
        if primary not in readouts:
            raise ValueError(f"primary read-out {primary!r} not among {sorted(readouts)}")
        payload: dict[str, Any] = dict(readouts[primary])
        payload["primary"] = primary
        payload["readouts"] = {name: dict(values) for name, values in readouts.items()}
        payload.update(extra)
        target = self.path / METRICS
        atomic_write_text(target, json.dumps(payload, indent=2, default=_json_default) + "\n")
        return target

    def read_metrics(self) -> dict[str, Any]:
        path = self.path / METRICS
        if not path.is_file():
            raise UserError(f"{self.path} has no {METRICS} yet (the run has not been evaluated)")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path} is not valid JSON (not UTF-8 text)") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON (line {err.lineno} column {err.colno})") from None
        if not isinstance(metrics, dict):
            raise UserError(f"{path} holds a JSON {_json_type(metrics)}, not an object of metrics")
        return metrics

    def write_assignments(
        self,
        clusters: Mapping[str, np.ndarray],
        primary: str,
        *,
        ids: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
    ) -> Path:
        """``assignments.csv``: one row per sample; the primary read-out is the ``cluster`` column."""
        n = len(clusters[primary])
        names = [primary, *sorted(name for name in clusters if name != primary)]
        header = ["id"]
        if labels is not None:
            header.append("label")
        header += ["cluster", "confidence"] + [f"cluster_{name}" for name in names[1:]]
        columns: list[Sequence[Any]] = [list(ids) if ids is not None else range(n)]
        if labels is not None:
            columns.append(np.asarray(labels).tolist())
        columns.append(np.asarray(clusters[primary]).tolist())
        columns.append(
            [f"{c:.6f}" for c in np.asarray(confidence, dtype=np.float64)]
            if confidence is not None
            else [""] * n
        )
        columns += [np.asarray(clusters[name]).tolist() for name in names[1:]]
        target = self.path / ASSIGNMENTS
        tmp = target.with_name(f".{ASSIGNMENTS}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(zip(*columns, strict=True))
        os.replace(tmp, target)
        return target

    def read_assignments(self) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
        """(clusters by read-out name, labels or None, primary read-out name) from ``assignments.csv``."""
        path = self.path / ASSIGNMENTS
        if not path.is_file():
            raise UserError(f"{self.path} has no {ASSIGNMENTS} (the run has not been evaluated)")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, None)
                rows = list(reader)
            except UnicodeDecodeError:
                raise UserError(f"{path} is not a UTF-8 CSV file") from None
            except csv.Error as err:  # e.g. a field past the csv module's size limit
                raise UserError(f"{path}, line {reader.line_num}: {err}") from None
        if header is None or "cluster" not in header:
            raise UserError(f"{path} is not a deepclust assignments file (no 'cluster' column)")
        if not rows:
            raise UserError(f"{path} has no rows")
        short = next((n for n, row in enumerate(rows, start=2) if len(row) != len(header)), None)
        if short is not None:
            raise UserError(f"{path}, line {short}: {len(header)} columns expected")
        table = {name: [row[i] for row in rows] for i, name in enumerate(header)}

        def integers(column: str) -> np.ndarray:
            try:
                return np.asarray(table[column], dtype=np.int64)
            except (ValueError, OverflowError):  # OverflowError: an integer past int64
                raise UserError(f"{path}: column {column!r} holds values that are not integers") from None

        # metrics.json names the read-out in the ``cluster`` column; a damaged one is an error, not a guess
        primary = (
            self.read_metrics().get("primary", "primary") if (self.path / METRICS).is_file() else "primary"
        )
        if not isinstance(primary, str) or not primary:
            raise UserError(f"{self.path / METRICS}: 'primary' is not the name of a read-out")
        clusters = {primary: integers("cluster")}
        for name in header:
            if name.startswith("cluster_"):
                clusters[name.removeprefix("cluster_")] = integers(name)
        labels = integers("label") if "label" in table else None
        return clusters, labels, primary


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages about a file that holds the wrong kind."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
