"""What a run shows and records while it trains: the progress bar, the log, TensorBoard, and stop signals."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from deepclust import host
from deepclust.data import ArrayDataset
from deepclust.errors import ConfigError
from deepclust.runs import RunDir

# SIGINT is Ctrl-C; SIGTERM is what `kill` and job schedulers (SLURM before a time limit) send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PYTHON_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
# the progress bar's resolution when it follows the time budget
_BAR_UNITS = 1000


@contextmanager
def stop_between_steps(enabled: bool, console: Console) -> Iterator[list[int]]:
    """A first SIGINT or SIGTERM is recorded in the returned list, which the loop reads after every step (it then
    saves and stops), so that neither loses a finished step; a second one interrupts at once. Only in the main
    thread of a single process, for signals that still have Python's default handling: the ranks of a
    distributed run would stop after different steps and wait for one another."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.print(f"{name}: saving after this step (a second signal stops at once, losing it)")

    previous = {
        number: signal.signal(number, handler)
        for number in STOP_SIGNALS
        if signal.getsignal(number) is _PYTHON_DEFAULTS[number]
    }
    try:
        yield received
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


class Monitor:
    """The console, the run's log (rank 0 only), TensorBoard and the progress bar of one training session.

    With a time budget the bar follows whichever ends the run first, the steps or the budget, so its total
    and its ETA are those of the run; without one it counts steps."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, is_global_zero: bool) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.is_global_zero = is_global_zero
        self.console = Console(stderr=True, quiet=not is_global_zero)
        self.tensorboard = self._tensorboard() if cfg.train.tensorboard and is_global_zero else None
        self.budget_s: float | None = (
            cfg.train.time_budget_minutes * 60 if cfg.train.time_budget_minutes else None
        )
        self.total_steps = 0
        self._progress: Progress | None = None
        self._task: Any = None
        self._window = {"start": time.perf_counter(), "data": 0.0, "steps": 0}

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard=true needs TensorBoard: pip install 'deepclust[tensorboard]'"
            ) from None
        return SummaryWriter(str(self.run_dir.path / "tensorboard"))

    def log(self, event: str, **fields: Any) -> None:
        """Append to log.jsonl from rank 0 only (every rank runs the same loop)."""
        if self.is_global_zero:
            self.run_dir.log(event, **fields)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars ``prefix/name``, when TensorBoard is on."""
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{prefix}/{name}", value, step)

    def announce(
        self,
        *,
        finished: bool,
        dataset: ArrayDataset,
        num_clusters: int,
        step: int,
        world_size: int,
        device: str,
        precision: str | None,
        extra: tuple[str, int] | None,
    ) -> None:
        """The run's first lines and its ``start`` event, once the run can start (``total_steps`` set)."""
        cfg = self.cfg
        self.console.print(f"run directory: [bold]{self.run_dir.path}[/]")
        if finished:
            self.console.print(
                f"{cfg.method} on {dataset.name} has finished training (step {step:,}); evaluating it again"
            )
        else:
            processes = f", {world_size} processes" if world_size > 1 else ""
            limit = f" or {cfg.train.time_budget_minutes:g} minutes" if cfg.train.time_budget_minutes else ""
            self.console.print(
                f"training {cfg.method} on {dataset.name}: {len(dataset):,} images, K = {num_clusters}; up to "
                f"{self.total_steps - step:,} steps{limit} on {device}{processes}, precision {precision}"
            )
        self.log(
            "start",
            method=cfg.method,
            dataset=dataset.name,
            samples=len(dataset),
            num_clusters=num_clusters,
            total_steps=self.total_steps,
            world_size=world_size,
            precision=precision,
            host_allocator=host.applied_settings,
            **({"extra_split": extra[0], "extra_samples": extra[1]} if extra else {}),
        )
        if extra is not None:
            self.console.print(
                f"every epoch starts with the {extra[1]:,} images of split {extra[0]!r} (instance-level losses only)"
            )

    # ------------------------------------------------------------------------------------------ progress
    def _completed(self, step: int, elapsed_s: float) -> float:
        if self.budget_s is None:
            return step
        done = max(step / max(1, self.total_steps), elapsed_s / self.budget_s)
        return min(1.0, done) * _BAR_UNITS

    @contextmanager
    def training(self, step: int, total_steps: int, elapsed_s: float) -> Iterator[None]:
        """The progress bar while the loop runs (on a terminal, on rank 0, with ``train.progress``)."""
        self.total_steps = total_steps
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not (self.cfg.train.progress and self.is_global_zero and sys.stderr.isatty()),
        )
        total = total_steps if self.budget_s is None else _BAR_UNITS
        self._task = progress.add_task(
            "training",
            total=total,
            completed=self._completed(step, elapsed_s),
            steps=self._steps_text(step, elapsed_s),
            status="",
        )
        self._progress = progress
        self.restart_window()
        with progress:
            yield
        self._progress = None

    def _steps_text(self, step: int, elapsed_s: float = 0.0) -> str:
        """Where the run is: its step, and with a time budget the share of the budget used."""
        if self.budget_s is None:
            return f"step {step}/{self.total_steps}"
        return f"step {step}/{self.total_steps}, {elapsed_s / 60:.1f} of {self.budget_s / 60:g} min"

    def restart_window(self) -> None:
        """Start a new throughput window (after work that is not a training step, such as an evaluation)."""
        self._window.update(start=time.perf_counter(), data=0.0, steps=0)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of work that is not a training step out of the throughput window."""
        self._window["start"] += seconds

    def step_done(self, data_wait_s: float) -> None:
        """Count a step, and the time it waited for its batch, in the throughput window."""
        self._window["data"] += data_wait_s
        self._window["steps"] += 1

    def train_window(
        self,
        losses: dict[str, torch.Tensor],
        *,
        step: int,
        epoch: int,
        elapsed_s: float,
        lr: float,
        images_per_step: int,
        split: str | None = None,
    ) -> None:
        """Log the losses of the last step and the window's throughput, and update the bar."""
        window = self._window
        now = time.perf_counter()
        seconds = max(now - window["start"], 1e-9)
        values = {name: round(float(value.detach()), 6) for name, value in losses.items()}
        record = {
            "step": step,
            "epoch": epoch,
            **values,
            "lr": lr,
            "images_per_s": round(window["steps"] * images_per_step / seconds, 1),
            "data_share": round(window["data"] / seconds, 4),
        }
        if split is not None:
            record["split"] = split
        self.log("train", **record)
        self.scalars("train", {key: record[key] for key in (*values, "lr", "images_per_s")}, step)
        status = f"loss {values['loss']:.4f}  {record['images_per_s']:.0f} img/s"
        if split is not None:
            status += f"  ({split})"
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=self._completed(step, elapsed_s),
                steps=self._steps_text(step, elapsed_s),
                status=status,
            )
        if not sys.stderr.isatty() and self.cfg.train.progress and self.is_global_zero:
            print(f"{self._steps_text(step, elapsed_s)} epoch {epoch} {status}", file=sys.stderr)
        window.update(start=now, data=0.0, steps=0)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
