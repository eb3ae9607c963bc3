"""The one training loop. It never knows which method runs: see ``deepclust/methods/base.py`` for the contract.

Lightning Fabric provides devices, precision (autocast), the DDP strategy and process launching
(``engine/fabric_setup.py``); evaluations are ``engine/evaluation.py``, and the progress bar, the log and stop
signals ``engine/monitor.py``. What stays here is the loop: the step order, the resume state and the schedules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig

from deepclust.data import ArrayDataset, TrainBatches, load_dataset, resolve_num_clusters
from deepclust.engine.checkpointing import Checkpoints, LoopState
from deepclust.engine.evaluation import Evaluation
from deepclust.engine.fabric_setup import adapt_method, launch_fabric, precision_of
from deepclust.engine.monitor import Monitor, stop_between_steps
from deepclust.engine.optim import build_optimizer, lr_at, set_lr
from deepclust.errors import ConfigError, UserError
from deepclust.methods import EXTRA_SPLIT, MAIN_SPLIT, Batch, TrainingProgress
from deepclust.runs import RunDir
from deepclust.runs.pretrained import build_method


class TrainingDiverged(Exception):
    """A loss became NaN or infinite; the last good state was saved first."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM stopped training between two steps; the state after the last step was saved
    first. ``signal_number`` says which."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class Trainer:
    """One run: built from a config, then :meth:`fit`."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.resume = resume
        self.fabric = fabric = launch_fabric(cfg)
        self.monitor = Monitor(cfg, run_dir, fabric.is_global_zero)
        self.console = self.monitor.console
        # a different stream per rank, so ranks draw different augmentations; DDP broadcasts rank 0's weights
        fabric.seed_everything(cfg.seed + fabric.global_rank, verbose=False)
        self.dataset = self._load(cfg.data.split, folder_labels=cfg.data.folder_labels)
        self.num_clusters = resolve_num_clusters(self.dataset, cfg.data.num_clusters)
        extra_dataset = self._extra_dataset()
        method = adapt_method(build_method(cfg, self.dataset.image_shape, self.num_clusters), fabric, cfg)
        self.method = method
        global_batch = cfg.optim.batch_size * fabric.world_size
        optimizer = build_optimizer(method.parameter_groups(cfg.optim.weight_decay), cfg.optim, global_batch)
        self.model, self.optimizer = fabric.setup(method, optimizer)
        if cfg.readout.neighbour_vote >= len(self.dataset):
            raise ConfigError(
                f"readout.neighbour_vote={cfg.readout.neighbour_vote}: the vote needs fewer neighbours than the "
                f"{len(self.dataset)} samples"
            )
        self.batches = self._batches_of(self.dataset, global_batch)
        self.extra_batches = None if extra_dataset is None else self._batches_of(extra_dataset, global_batch)
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
                prepared = method.prepare_training(self.dataset, fabric.device)
            if prepared:
                self.monitor.log("prepare", **prepared)
                self.console.print("prepared: " + ", ".join(f"{k} {v}" for k, v in prepared.items()))
        self.checkpoints = Checkpoints(fabric, run_dir, cfg, self.num_clusters, method, self.optimizer)
        self.evaluation = Evaluation(
            method, self.dataset, self.num_clusters, cfg, fabric, run_dir, self.monitor
        )
        if resume:
            self._restore()
        # Steps taken before a resume with another number of processes were of another size; the schedules
        # count from where this session's steps would have put the run (step_offset is 0 without such a resume)
        self.step_offset = self.state.step - (self.state.epoch * self.steps_per_epoch + self.state.batch)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch + self.step_offset
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.monitor.total_steps = self.total_steps

    def _load(self, split: str, folder_labels: bool = False) -> ArrayDataset:
        data = self.cfg.data
        return load_dataset(
            data.name, split, data.root, image_size=data.image_size, folder_labels=folder_labels
        )

    def _extra_dataset(self) -> ArrayDataset | None:
        """The images of ``data.extra_split`` (the configuration checked the method and the split name)."""
        extra_split = self.cfg.data.extra_split
        if extra_split is None:
            return None
        try:
            extra = self._load(extra_split)
        except UserError as err:
            raise UserError(f"data.extra_split: {err}") from None
        if extra.image_shape != self.dataset.image_shape:
            raise UserError(
                f"data.extra_split: its images are {extra.image_shape}, the clustered ones "
                f"{self.dataset.image_shape}; set data.image_size"
            )
        return extra

    def _batches_of(self, data: ArrayDataset, global_batch: int) -> TrainBatches:
        batches = TrainBatches(
            data,
            self.cfg.optim.batch_size,
            rank=self.fabric.global_rank,
            world_size=self.fabric.world_size,
            seed=self.cfg.seed,
            pin_memory=self.fabric.device.type == "cuda",
        )
        if len(batches) == 0:
            raise UserError(
                f"{len(data)} samples are fewer than one global batch of {global_batch}: lower optim.batch_size"
            )
        return batches

    # ----------------------------------------------------------------------------------------------- state
    def save(self) -> None:
        """``checkpoints/last.pt``, written by rank 0; every rank must call it."""
        self.checkpoints.save_last(self.state)

    def _restore(self) -> None:
        self.state = self.checkpoints.restore(self.steps_per_epoch)
        if self.fabric.is_global_zero:
            self.run_dir.save_config(self.cfg)  # with this session's overrides, now that the checkpoint fits
        self.monitor.log("resume", step=self.state.step, epoch=self.state.epoch)
        self.console.print(f"resumed from {self.run_dir.last_checkpoint} at step {self.state.step}")

    @property
    def precision(self) -> str | None:
        """The precision Fabric trains in (``32-true``, ``bf16-mixed``, ...)."""
        return precision_of(self.fabric)

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train until the epochs, the step limit or the time budget end (or a stop signal), then evaluate."""
        cfg, state = self.cfg, self.state
        budget_s = cfg.train.time_budget_minutes * 60 if cfg.train.time_budget_minutes else math.inf
        budget_spent = state.elapsed_s >= budget_s
        extra = self.extra_batches
        self.monitor.announce(
            finished=budget_spent or state.step >= self.total_steps,
            dataset=self.dataset,
            num_clusters=self.num_clusters,
            step=state.step,
            world_size=self.fabric.world_size,
            device=self.fabric.device.type,
            precision=self.precision,
            extra=None if extra is None else (str(cfg.data.extra_split), len(extra.dataset)),
        )
        session_start = time.perf_counter() - state.elapsed_s
        # a run resumed after its budget ran out is only evaluated again, not trained a step further
        stop_reason = "time budget" if budget_spent else "epochs"
        images_per_step = cfg.optim.batch_size * self.fabric.world_size
        monitor = self.monitor
        with (
            monitor.training(state.step, self.total_steps, state.elapsed_s),
            stop_between_steps(self.fabric.world_size == 1, self.console) as stop_signals,
        ):
            while stop_reason == "epochs" and state.step < self.total_steps:
                if state.batch == 0:
                    # training time (it counts in the budget), but not part of the throughput window
                    monitor.exclude(self._epoch_start())
                wait_start = time.perf_counter()
                for batch in self._epoch_batches(state.epoch, state.batch):
                    monitor.step_done(time.perf_counter() - wait_start)
                    losses = self._step(batch)
                    state.batch += 1
                    state.elapsed_s = time.perf_counter() - session_start
                    if state.step % cfg.train.log_every_steps == 0 or state.step == self.total_steps:
                        monitor.train_window(
                            losses,
                            step=state.step,
                            epoch=state.epoch,
                            elapsed_s=state.elapsed_s,
                            lr=self.optimizer.param_groups[0]["lr"],
                            images_per_step=images_per_step,
                            split=cfg.data.extra_split if batch.is_extra else None,
                        )
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
                        # evaluation is not training time
                        session_start = time.perf_counter() - state.elapsed_s
                        monitor.restart_window()
        if stop_reason == "time budget" and not budget_spent:  # a finished run said so above
            self.console.print(
                f"time budget of {cfg.train.time_budget_minutes} min reached at step {state.step}"
            )
        self.save()
        monitor.log("stop", step=state.step, reason=stop_reason, elapsed_s=round(state.elapsed_s, 2))
        if stop_reason == "interrupted":
            monitor.close()
            raise TrainingInterrupted(
                f"interrupted at step {state.step}, saved to {self.run_dir.last_checkpoint}", stop_signals[0]
            )
        metrics = self.evaluate()
        monitor.close()
        return metrics

    def _epoch_start(self) -> float:
        """The method's :meth:`~deepclust.methods.base.Method.on_epoch_start` (e.g. ProPos's k-means); returns
        the seconds it took."""
        epoch = self.state.epoch
        started = time.perf_counter()
        stats = self.method.on_epoch_start(self.dataset, self.fabric.device, epoch)
        seconds = time.perf_counter() - started
        if stats:
            self.monitor.log(
                "epoch_start", epoch=epoch, step=self.state.step, seconds=round(seconds, 2), **stats
            )
            self.console.print(
                f"epoch {epoch}: " + ", ".join(f"{key} {value}" for key, value in stats.items())
            )
        return seconds

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch ``start``, on the training device: those of ``data.extra_split``
        first, then those of the clustered split with the companions the method asks for."""
        if self.extra_batches is not None:
            for images, _, indices in self.extra_batches.epoch(
                epoch, start=min(start, len(self.extra_batches))
            ):
                yield Batch(self._to_device(images), indices, split=EXTRA_SPLIT)
            start = max(0, start - len(self.extra_batches))
        for images, companions, indices in self.batches.epoch(
            epoch, start=start, companions=self.method.companion_indices
        ):
            yield Batch(
                self._to_device(images),
                indices,
                None if companions is None else self._to_device(companions),
                split=MAIN_SPLIT,
            )

    def _step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step, in the order of ``deepclust/methods/base.py``."""
        state, cfg = self.state, self.cfg
        # training time only (evaluations excluded), saved in checkpoints, so a resumed run continues it
        budget_share = None if self.schedule_budget_s is None else state.elapsed_s / self.schedule_budget_s
        # the same clock for the method's schedules (BYOL's momentum) as for the rate
        step, total_steps = state.step - self.step_offset, self.total_steps - self.step_offset
        fraction = step / max(1, total_steps) if budget_share is None else min(1.0, budget_share)
        lr = lr_at(
            step,
            total_steps,
            self.warmup_steps,
            self.base_lr,
            cfg.optim.schedule,
            cfg.optim.min_lr_ratio,
            budget_share,
        )
        set_lr(self.optimizer, lr)
        progress = TrainingProgress(step, fraction, self.steps_per_epoch)
        losses = self.model(batch)
        total = losses["loss"]
        finite = self._finite_check(total)
        self.fabric.backward(total)
        if not finite():  # the parameters and the optimiser are still untouched
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(losses)
        self.method.on_before_optimizer_step(progress)
        if cfg.optim.grad_clip:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_after_optimizer_step(progress)
        state.step += 1
        return losses

    def _finite_check(self, loss: torch.Tensor) -> Callable[[], bool]:
        """Whether ``loss`` is finite, as a call made after the backward pass is queued. On a GPU the flag is
        copied to the host behind the forward pass and the call waits for that copy alone, so the GPU runs
        the backward meanwhile; reading the flag at once would drain the GPU's queue every step."""
        flag = torch.isfinite(loss.detach())
        if flag.device.type != "cuda":
            return lambda: bool(flag)
        host_flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        host_flag.copy_(flag, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def check() -> bool:
            copied.synchronize()
            return bool(host_flag)

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
        self.monitor.log("diverged", step=self.state.step, losses=bad or ["loss"])
        advice = "Lower optim.lr" + (", or use train.precision=32" if self.precision != "32-true" else "")
        raise TrainingDiverged(
            f"non-finite loss at step {self.state.step} ({', '.join(bad or ['loss'])}); {kept}. {advice}"
        )

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """Read-outs on the whole dataset (rank 0): metrics.json, assignments.csv, and ``checkpoints/best.pt``
        when the primary read-out's ACC is the best so far. Every rank must call it."""
        metrics, score = self.evaluation(self.state.step, self.state.epoch)
        if score is not None and score > self.state.best_score:
            # label-based model selection, reported apart from the last state (see docs/engine.md)
            self.state.best_score = score
            self.checkpoints.save_best(self.state)
        return metrics


def train(cfg: DictConfig, run_dir: RunDir, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` on ``cfg.data`` into ``run_dir`` (resuming from its last checkpoint if asked)."""
    return Trainer(cfg, run_dir, resume=resume).fit()
