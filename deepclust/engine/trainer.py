"""The one training loop. It never knows which method runs: see ``deepclust/methods/base.py`` for the contract.

Lightning Fabric provides devices, precision (autocast), the DDP strategy and process launching; the loop itself
stays explicit so the step order, the resume state and on-device augmentation are visible in one place.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from deepclust import host
from deepclust.config import to_yaml
from deepclust.data import ArrayDataset, load_dataset
from deepclust.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from deepclust.engine.data import TrainBatches
from deepclust.engine.optim import build_optimizer, lr_at, set_lr
from deepclust.engine.run_dir import RunDir
from deepclust.errors import ConfigError, UserError
from deepclust.evaluation.readout import ReadoutResult, compute_readouts, extract
from deepclust.methods import Method, TrainingProgress, method_class
from deepclust.methods.common import first_mismatch
from deepclust.methods.kmeans import resolve_num_clusters


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last good state was saved first."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM stopped training between two steps; the state after the last step was saved
    first. ``signal_number`` says which."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


# SIGINT is Ctrl-C; SIGTERM is what `kill` and job schedulers (SLURM before a time limit) send
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# the feature spread (readout.feature_spread) below which the representation counts as collapsed
FEATURE_SPREAD_COLLAPSED = 1e-4
_PYTHON_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@contextmanager
def _stop_between_steps(enabled: bool, console: Console) -> Iterator[list[int]]:
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
        for number in _STOP_SIGNALS
        if signal.getsignal(number) is _PYTHON_DEFAULTS[number]
    }
    try:
        yield received
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@dataclass
class LoopState:
    """Where training is: everything besides the weights that a resume needs."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch (the data.extra_split batches come first)
    elapsed_s: float = 0.0  # training wall-clock time over all sessions (for the time budget)
    best_score: float = -math.inf
    steps_per_epoch: int = 0  # of the session that saved it (0 in checkpoints from before it was recorded)


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX512-BF16), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fabric_settings(cfg: DictConfig) -> dict[str, Any]:
    """Accelerator, devices, strategy and precision for Fabric from ``cfg.device`` and ``cfg.train``."""
    device = str(cfg.device)
    cuda = torch.cuda.is_available()
    if device in ("cuda", "gpu") or device.startswith("cuda:"):
        if not cuda:
            raise UserError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        accelerator = "cuda"
    elif device == "cpu":
        accelerator = "cpu"
    elif device == "auto":
        accelerator = "cuda" if cuda else "cpu"
    else:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    devices: int | list[int] = cfg.train.devices
    if device.startswith("cuda:"):
        index, count = device.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise UserError(f"--device {device}: this machine's CUDA GPUs are cuda:0 to cuda:{count - 1}")
        devices = [int(index)]
    precision = str(cfg.train.precision)
    if precision == "auto":
        if accelerator == "cuda":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "bf16-mixed" if cpu_has_bf16() else "32-true"
    elif precision == "32":
        precision = "32-true"
    multi = cfg.train.num_nodes > 1 or (isinstance(devices, int) and devices > 1)
    strategy: str | DDPStrategy = "ddp" if cfg.train.strategy == "ddp" or multi else "auto"
    if strategy == "ddp" and cfg.data.extra_split is not None:
        # the instance-only steps on the extra split leave the cluster head without gradients
        strategy = DDPStrategy(find_unused_parameters=True)
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": cfg.train.num_nodes,
        "strategy": strategy,
        "precision": precision,
    }


@contextmanager
def _lightning_info_silenced() -> Iterator[None]:
    """Lightning announces its mixed precision and its distributed processes at INFO level while Fabric is built
    and launched, before the method has checked its settings; the trainer says both itself once they are
    checked (:meth:`Trainer.fit`), so that bad input stays one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # its logger's name depends on which lightning packages are imported
    try:
        yield
    finally:
        logging.disable(previous)


class Trainer:
    """One run: built from a config, then :meth:`fit`."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.resume = resume
        with _lightning_info_silenced():
            self.fabric = Fabric(**fabric_settings(cfg))
            self.fabric.launch()
        if self.fabric.device.type == "cuda":
            # the input sizes never change, so cuDNN's timing of its convolution algorithms pays off
            torch.backends.cudnn.benchmark = bool(cfg.train.cudnn_benchmark)
        self.console = Console(stderr=True, quiet=not self.fabric.is_global_zero)
        # a different stream per rank, so ranks draw different augmentations; DDP broadcasts rank 0's weights
        self.fabric.seed_everything(cfg.seed + self.fabric.global_rank, verbose=False)
        self.dataset: ArrayDataset = load_dataset(
            cfg.data.name,
            cfg.data.split,
            cfg.data.root,
            image_size=cfg.data.image_size,
            folder_labels=cfg.data.folder_labels,
        )
        self.num_clusters = resolve_num_clusters(cfg, self.dataset)
        extra_dataset = self._extra_dataset()
        method: Method = method_class(cfg.method)(cfg, self.dataset.image_shape, self.num_clusters)
        if self.fabric.world_size > 1 and cfg.train.sync_batchnorm:
            if self.fabric.device.type == "cuda":
                method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
            else:
                # DDP refuses SyncBatchNorm on CPU ("SyncBatchNorm layers only work with GPU modules")
                if self.fabric.is_global_zero:  # once, not once per process
                    warnings.warn(
                        "train.sync_batchnorm is ignored on CPU: BatchNorm statistics stay per process",
                        stacklevel=2,
                    )
        if cfg.train.channels_last:
            method = method.to(memory_format=torch.channels_last)
        if cfg.train.compile and hasattr(method, "backbone"):
            # in place: wrapping it (torch.compile(module)) would prefix every checkpoint key with "_orig_mod."
            method.backbone.compile()
        self.method = method
        global_batch = cfg.optim.batch_size * self.fabric.world_size
        optimizer = build_optimizer(method.parameter_groups(cfg.optim.weight_decay), cfg.optim, global_batch)
        self.model, self.optimizer = self.fabric.setup(method, optimizer)

        def batches_of(data: ArrayDataset) -> TrainBatches:
            batches = TrainBatches(
                data,
                cfg.optim.batch_size,
                rank=self.fabric.global_rank,
                world_size=self.fabric.world_size,
                seed=cfg.seed,
                pin_memory=self.fabric.device.type == "cuda",
            )
            if len(batches) == 0:
                raise UserError(
                    f"{len(data)} samples are fewer than one global batch of {global_batch}: "
                    "lower optim.batch_size"
                )
            return batches

        if cfg.train.neighbour_vote >= len(self.dataset):
            raise ConfigError(
                f"train.neighbour_vote={cfg.train.neighbour_vote}: the vote needs fewer neighbours than the "
                f"{len(self.dataset)} samples"
            )
        self.batches = batches_of(self.dataset)
        self.extra_batches = None if extra_dataset is None else batches_of(extra_dataset)
        self.steps_per_epoch = len(self.batches) + (len(self.extra_batches) if self.extra_batches else 0)
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.base_lr = optimizer.param_groups[0]["base_lr"]
        # the budget (s) the schedule runs over, or None when it runs over the steps (optim.schedule_over)
        budget = cfg.train.time_budget_minutes
        over_time = cfg.optim.schedule_over == "time" or (cfg.optim.schedule_over == "auto" and budget)
        self.schedule_budget_s: float | None = budget * 60 if over_time else None
        self.state = LoopState(steps_per_epoch=self.steps_per_epoch)
        if not resume:  # on resume, what this computes is restored with the method's state
            with self.console.status("preparing the method's training data"):
                prepared = method.prepare_training(self.dataset, self.fabric.device)
            if prepared:
                self._log("prepare", **prepared)
                self.console.print("prepared: " + ", ".join(f"{k} {v}" for k, v in prepared.items()))
        self.tensorboard = (
            self._tensorboard() if cfg.train.tensorboard and self.fabric.is_global_zero else None
        )
        if resume:
            self._restore()
        # Steps taken before a resume with another number of processes were of another size; the schedules
        # count from where this session's steps would have put the run (step_offset is 0 without such a resume)
        self.step_offset = self.state.step - (self.state.epoch * self.steps_per_epoch + self.state.batch)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch + self.step_offset
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

    def _extra_dataset(self) -> ArrayDataset | None:
        """The images of ``data.extra_split`` (the configuration checked the method and the split name)."""
        data = self.cfg.data
        if data.extra_split is None:
            return None
        try:
            extra = load_dataset(data.name, data.extra_split, data.root, image_size=data.image_size)
        except UserError as err:
            raise UserError(f"data.extra_split: {err}") from None
        if extra.image_shape != self.dataset.image_shape:
            raise UserError(
                f"data.extra_split: its images are {extra.image_shape}, the clustered ones "
                f"{self.dataset.image_shape}; set data.image_size"
            )
        return extra

    # ----------------------------------------------------------------------------------------------- state
    def _checkpoint(self, rng: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loop": vars(self.state).copy(),
            "rng": rng,
            "config": to_yaml(self.cfg),
        }

    def _rng_states(self) -> dict[str, Any] | list[dict[str, Any]]:
        """This process's random state, or under DDP every rank's, in rank order (each rank draws its own
        augmentations, so each must get its own stream back on resume). Every rank must call it."""
        if self.fabric.world_size == 1:
            return rng_state()
        states: list[Any] = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(states, rng_state())
        return states

    def save(self) -> None:
        """``checkpoints/last.pt``, written by rank 0; every rank must call it."""
        rng = self._rng_states()
        if self.fabric.is_global_zero:
            save_checkpoint(self._checkpoint(rng), self.run_dir.last_checkpoint)
        self.fabric.barrier()

    def _restore(self) -> None:
        path = self.run_dir.last_checkpoint
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        checkpoint = load_checkpoint(path)
        missing = next(
            (key for key in ("method", "optimizer", "loop", "rng") if not checkpoint.get(key)), None
        )
        if missing:  # readable, but not written by this loop (or hand-edited)
            raise UserError(
                f"cannot resume from {path}: not a deepclust training checkpoint (no {missing!r})"
            )
        try:
            self.method.load_state_dict(checkpoint["method"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(
                f"{path} does not fit this configuration ({first_mismatch(err)}); settings that shape the model"
                " or the optimiser (model.*, params.*, --clusters) cannot change on --resume"
            ) from None
        try:
            self.state = LoopState(**checkpoint["loop"])
        except TypeError:
            raise UserError(f"cannot resume from {path}: its loop state is not this version's") from None
        saved_steps_per_epoch = self.state.steps_per_epoch or self.steps_per_epoch
        if saved_steps_per_epoch != self.steps_per_epoch:
            # another number of processes (or batch size): go on from the same share of the epoch
            self.state.batch = round(self.state.batch * self.steps_per_epoch / saved_steps_per_epoch)
        self.state.steps_per_epoch = self.steps_per_epoch  # recorded from now on, also for older checkpoints
        self._restore_rng(checkpoint["rng"])
        self.state.best_score = max(self.state.best_score, self._saved_best_score())
        if self.fabric.is_global_zero:
            self.run_dir.save_config(self.cfg)  # with this session's overrides, now that the checkpoint fits
        self._log("resume", step=self.state.step, epoch=self.state.epoch)
        self.console.print(f"resumed from {path} at step {self.state.step}")

    def _restore_rng(self, saved: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Each rank's own random state; a checkpoint of another number of processes (or of one rank's state
        only) cannot give every rank its stream, so then each draws a new one from the seed and the step."""
        rank, world = self.fabric.global_rank, self.fabric.world_size
        if isinstance(saved, list) and len(saved) == world:
            set_rng_state(saved[rank])
        elif isinstance(saved, dict) and world == 1:
            set_rng_state(saved)
        else:
            self.fabric.seed_everything(self.cfg.seed + rank + world * self.state.step, verbose=False)

    def _saved_best_score(self) -> float:
        """The score of ``checkpoints/best.pt``: ``last.pt`` is written before the evaluation that may have
        replaced ``best.pt``, so its own best score can lag behind (−∞ without a readable ``best.pt``)."""
        best_path = self.run_dir.best_checkpoint
        if not best_path.is_file():
            return -math.inf
        try:
            return float(load_checkpoint(best_path)["loop"]["best_score"])
        except (UserError, KeyError, TypeError, ValueError):
            warnings.warn(f"{best_path} is unreadable; the next better evaluation replaces it", stacklevel=2)
            return -math.inf

    def _log(self, event: str, **fields: Any) -> None:
        """Append to log.jsonl from rank 0 only (every rank runs the same loop)."""
        if self.fabric.is_global_zero:
            self.run_dir.log(event, **fields)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard=true needs TensorBoard: pip install 'deepclust[tensorboard]'"
            ) from None
        return SummaryWriter(str(self.run_dir.path / "tensorboard"))

    @property
    def precision(self) -> str | None:
        """The precision Fabric trains in (``32-true``, ``bf16-mixed``, ...)."""
        return getattr(getattr(self.fabric, "_precision", None), "precision", None)

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        budget_s = cfg.train.time_budget_minutes * 60 if cfg.train.time_budget_minutes else math.inf
        precision = self.precision
        processes = f", {self.fabric.world_size} processes" if self.fabric.world_size > 1 else ""
        limit = f" or {cfg.train.time_budget_minutes:g} minutes" if cfg.train.time_budget_minutes else ""
        budget_spent = state.elapsed_s >= budget_s
        self.console.print(f"run directory: [bold]{self.run_dir.path}[/]")  # now that the run can start
        if budget_spent or state.step >= self.total_steps:
            self.console.print(
                f"{cfg.method} on {self.dataset.name} has finished training (step {state.step:,}); evaluating it again"
            )
        else:
            self.console.print(
                f"training {cfg.method} on {self.dataset.name}: {len(self.dataset):,} images, "
                f"K = {self.num_clusters}; up to {self.total_steps - state.step:,} steps{limit} on "
                f"{self.fabric.device.type}{processes}, precision {precision}"
            )
        self._log(
            "start",
            method=cfg.method,
            dataset=self.dataset.name,
            samples=len(self.dataset),
            num_clusters=self.num_clusters,
            total_steps=self.total_steps,
            world_size=self.fabric.world_size,
            precision=precision,
            host_allocator=host.applied_settings,
            **(
                {"extra_split": cfg.data.extra_split, "extra_samples": len(self.extra_batches.dataset)}
                if self.extra_batches is not None
                else {}
            ),
        )
        if self.extra_batches is not None:
            self.console.print(
                f"every epoch starts with the {len(self.extra_batches.dataset):,} images of split "
                f"{cfg.data.extra_split!r} (instance-level losses only)"
            )
        progress = self._progress()
        task = progress.add_task("training", total=self.total_steps, completed=state.step, status="")
        session_start = time.perf_counter() - state.elapsed_s
        window = {"start": time.perf_counter(), "data": 0.0, "steps": 0}
        # a run resumed after its budget ran out is only evaluated again, not trained a step further
        stop_reason = "time budget" if budget_spent else "epochs"
        images_per_step = cfg.optim.batch_size * self.fabric.world_size
        single_process = self.fabric.world_size == 1
        with progress, _stop_between_steps(single_process, self.console) as stop_signals:
            while stop_reason == "epochs" and state.step < self.total_steps:
                if state.batch == 0:
                    # training time (it counts in the budget), but not part of the throughput window
                    window["start"] += self._epoch_start()
                wait_start = time.perf_counter()
                for images, companions, indices, instance_only in self._epoch_batches(
                    state.epoch, state.batch
                ):
                    window["data"] += time.perf_counter() - wait_start
                    losses = self._step(images, companions, indices, instance_only=instance_only)
                    state.batch += 1
                    window["steps"] += 1
                    state.elapsed_s = time.perf_counter() - session_start
                    if state.step % cfg.train.log_every_steps == 0 or state.step == self.total_steps:
                        self._log_window(losses, window, images_per_step, progress, task, instance_only)
                    if state.step % cfg.train.checkpoint_every_steps == 0:
                        self.save()
                    if state.step >= self.total_steps:
                        break
                    if state.elapsed_s >= budget_s:
                        stop_reason = "time budget"
                        break
                    if stop_signals:
                        stop_reason = "interrupted"
                        break
                    wait_start = time.perf_counter()
                if stop_reason != "epochs":
                    break
                if state.batch >= self.steps_per_epoch:
                    state.epoch += 1
                    state.batch = 0
                    self.save()
                    if state.epoch % cfg.train.eval_every_epochs == 0 and state.step < self.total_steps:
                        self.evaluate()
                        session_start = (
                            time.perf_counter() - state.elapsed_s
                        )  # evaluation is not training time
        if stop_reason == "time budget" and not budget_spent:  # a finished run said so above
            self.console.print(
                f"time budget of {cfg.train.time_budget_minutes} min reached at step {state.step}"
            )
        self.save()
        self._log("stop", step=state.step, reason=stop_reason, elapsed_s=round(state.elapsed_s, 2))
        if stop_reason == "interrupted":
            if self.tensorboard is not None:
                self.tensorboard.close()
            raise TrainingInterrupted(
                f"interrupted at step {state.step}, saved to {self.run_dir.last_checkpoint}", stop_signals[0]
            )
        metrics = self.evaluate()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return metrics

    def _epoch_start(self) -> float:
        """The method's :meth:`~deepclust.methods.base.Method.on_epoch_start` (e.g. ProPos's k-means); returns
        the seconds it took."""
        epoch = self.state.epoch
        started = time.perf_counter()
        stats = self.method.on_epoch_start(self.dataset, self.fabric.device, epoch)
        seconds = time.perf_counter() - started
        if stats:
            self._log("epoch_start", epoch=epoch, step=self.state.step, seconds=round(seconds, 2), **stats)
            self.console.print(
                f"epoch {epoch}: " + ", ".join(f"{key} {value}" for key, value in stats.items())
            )
        return seconds

    def _epoch_batches(
        self, epoch: int, start: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, bool]]:
        """``(images, companions, indices, instance_only)`` for the batches of ``epoch`` from batch ``start``:
        those of ``data.extra_split`` first (instance-level losses only), then those of the clustered split."""
        if self.extra_batches is not None:
            for images, _, indices in self.extra_batches.epoch(
                epoch, start=min(start, len(self.extra_batches))
            ):
                yield images, None, indices, True
            start = max(0, start - len(self.extra_batches))
        for images, companions, indices in self.batches.epoch(
            epoch, start=start, companions=self.method.companion_indices
        ):
            yield images, companions, indices, False

    def _step(
        self,
        images: torch.Tensor,
        companions: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        *,
        instance_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One optimisation step, in the order of ``deepclust/methods/base.py``."""
        state, cfg = self.state, self.cfg
        # training time only (evaluations excluded), saved in checkpoints, so a resumed run continues it
        progress = None if self.schedule_budget_s is None else state.elapsed_s / self.schedule_budget_s
        # the same clock for the method's schedules (BYOL's momentum) as for the rate
        step, total_steps = state.step - self.step_offset, self.total_steps - self.step_offset
        fraction = step / max(1, total_steps) if progress is None else min(1.0, progress)
        set_lr(
            self.optimizer,
            lr_at(
                step,
                total_steps,
                self.warmup_steps,
                self.base_lr,
                cfg.optim.schedule,
                cfg.optim.min_lr_ratio,
                progress,
            ),
        )
        batch = [self._to_device(x) for x in (images, companions) if x is not None]
        if instance_only:
            losses = self.model(*batch, instance_only=True)
        elif self.method.uses_indices:
            losses = self.model(*batch, indices=indices)
        else:
            losses = self.model(*batch)
        total = losses["loss"]
        finite = self._finite_check(total)
        self.fabric.backward(total)
        if not finite():  # the parameters and the optimiser are still untouched
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(losses)
        self.method.on_before_optimizer_step(step)
        if cfg.optim.grad_clip:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_after_optimizer_step(TrainingProgress(step, fraction, self.steps_per_epoch))
        state.step += 1
        return losses

    def _finite_check(self, loss: torch.Tensor) -> Callable[[], bool]:
        """Whether ``loss`` is finite, as a call made after the backward pass is queued. On a GPU the flag is
        copied to the host behind the forward pass and the call waits for that copy alone, so the GPU runs
        the backward meanwhile; reading the flag at once would drain the GPU's queue every step."""
        flag = torch.isfinite(loss.detach())
        if flag.device.type != "cuda":
            return lambda: bool(flag)
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def check() -> bool:
            copied.synchronize()
            return bool(host)

        return check

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.fabric.device, non_blocking=True)
        if self.cfg.train.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _diverged(self, losses: dict[str, torch.Tensor]) -> None:
        bad = [
            name for name, value in losses.items() if name != "loss" and not torch.isfinite(value.detach())
        ]
        path = self.run_dir.last_checkpoint
        state = self.method.state_dict().values()
        if all(torch.isfinite(t).all() for t in state if t.is_floating_point()):
            self.save()  # the state before this step: nothing was updated yet
            kept = f"the state before it is in {path}"
        else:  # an earlier update overflowed the weights: keep the last good checkpoint
            left = f"{path} was left as it was" if path.is_file() else "no checkpoint was written"
            kept = f"the weights were already non-finite, so {left}"
        self._log("diverged", step=self.state.step, losses=bad or ["loss"])
        advice = "Lower optim.lr" + (", or use train.precision=32" if self.precision != "32-true" else "")
        raise TrainingDiverged(
            f"non-finite loss at step {self.state.step} ({', '.join(bad or ['loss'])}); {kept}. {advice}"
        )

    def _log_window(
        self,
        losses: dict[str, torch.Tensor],
        window: dict[str, float],
        images_per_step: int,
        progress: Progress,
        task: Any,
        instance_only: bool = False,
    ) -> None:
        now = time.perf_counter()
        seconds = max(now - window["start"], 1e-9)
        values = {name: round(float(value.detach()), 6) for name, value in losses.items()}
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            **values,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": round(window["steps"] * images_per_step / seconds, 1),
            "data_share": round(window["data"] / seconds, 4),
        }
        if instance_only:
            record["split"] = self.cfg.data.extra_split
        if self.fabric.is_global_zero:
            self._log("train", **record)
            if self.tensorboard is not None:
                for key in (*values, "lr", "images_per_s"):
                    self.tensorboard.add_scalar(f"train/{key}", record[key], self.state.step)
        status = f"loss {values['loss']:.4f}  {record['images_per_s']:.0f} img/s"
        if instance_only:
            status += f"  ({self.cfg.data.extra_split})"
        progress.update(task, completed=self.state.step, status=status)
        if not sys.stderr.isatty() and self.cfg.train.progress and self.fabric.is_global_zero:
            print(
                f"step {self.state.step}/{self.total_steps} epoch {self.state.epoch} {status}",
                file=sys.stderr,
            )
        window.update(start=now, data=0.0, steps=0)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not (self.cfg.train.progress and self.fabric.is_global_zero and sys.stderr.isatty()),
        )

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """Read-outs on the whole dataset (rank 0), metrics.json + assignments.csv, best checkpoint, warnings."""
        metrics: dict[str, Any] = {}
        if self.fabric.is_global_zero:
            with self.console.status("evaluating on the full dataset"):
                outputs = extract(
                    self.method, self.dataset, self.fabric.device, autocast=self.fabric.autocast
                )
                result = compute_readouts(
                    outputs,
                    self.dataset.labels,
                    self.num_clusters,
                    self.cfg.kmeans,
                    self.cfg.seed,
                    neighbour_vote_k=self.cfg.train.neighbour_vote,
                    balanced=self.cfg.train.balanced_readout,
                )
            metrics = self._write_evaluation(result)
        self.fabric.barrier()
        return metrics

    def _write_evaluation(self, result: ReadoutResult) -> dict[str, Any]:
        primary = self.method.primary_readout
        readouts = result.metrics or {name: {} for name in result.clusters}
        self.run_dir.write_assignments(
            result.clusters,
            primary,
            ids=self.dataset.ids,
            labels=self.dataset.labels,
            confidence=result.confidence,
        )
        self.run_dir.write_metrics(
            readouts, primary, step=self.state.step, epoch=self.state.epoch, stats=result.stats
        )
        self._log(
            "eval",
            step=self.state.step,
            epoch=self.state.epoch,
            primary=primary,
            readouts=readouts,
            stats=result.stats,
        )
        if self.tensorboard is not None:
            for name, values in readouts.items():
                for key, value in values.items():
                    self.tensorboard.add_scalar(f"eval/{name}_{key}", value, self.state.step)
        self._warn_collapse(result)
        score = readouts.get(primary, {}).get("acc")
        if score is not None and score > self.state.best_score:
            # label-based model selection, reported apart from the last state (see docs/engine.md)
            self.state.best_score = score
            # rank 0 alone evaluates, so this holds its random state only (resume reads last.pt's)
            save_checkpoint(self._checkpoint(rng_state()), self.run_dir.best_checkpoint)
        summary = "  ".join(
            f"{name}: ACC {v['acc']:.4f} NMI {v['nmi']:.4f}" for name, v in readouts.items() if "acc" in v
        )
        if summary:
            self.console.print(f"step {self.state.step} epoch {self.state.epoch}  {summary}")
        return self.run_dir.read_metrics()

    def _warn_collapse(self, result: ReadoutResult) -> None:
        limit = self.cfg.train.collapse_warning_fraction
        for name, share in result.stats["largest_cluster_share"].items():
            if share > limit:
                message = f"read-out {name!r}: one cluster holds {share:.0%} of the samples (collapse?)"
                warnings.warn(message, stacklevel=2)
                self._log("collapse_warning", readout=name, largest_cluster_share=share)
        spread = result.stats["feature_spread"]
        if spread < FEATURE_SPREAD_COLLAPSED:
            warnings.warn(
                f"the features all point the same way (spread {spread:.1e}): the representation has collapsed",
                stacklevel=2,
            )
            self._log("collapse_warning", feature_spread=spread)


def train(cfg: DictConfig, run_dir: RunDir, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data`` into ``run_dir`` (resuming from its last checkpoint if asked)."""
    return Trainer(cfg, run_dir, resume=resume).fit()
