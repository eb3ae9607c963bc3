"""Training throughput of each learner: images per second through the engine's own training step.

For every method this builds the trainer ``deepclust train`` would build (``configs/<method>/<dataset>.yaml``
plus the overrides), then times ``--steps`` optimisation steps after ``--warmup`` untimed ones: reading the
uint8 batch, the copy to the device, the batched augmentations, forward, backward and the optimiser step
(Fabric's precision and the config's channels-last and compile settings included). No evaluation runs. Images/s
counts input images: each one yields the method's views.

    python benchmarks/train_speed.py --dataset fashion-mnist --methods cc simclr byol swav
    python benchmarks/train_speed.py --dataset cifar10 --methods cc simclr byol swav --device cuda \\
        --out speed.json model.backbone=resnet18 model.stem=cifar augment.image_size=null optim.batch_size=512 \\
        train.precision=bf16-mixed

Where CIFAR-10 is not on disk, ``--random-cifar10 N`` writes N random images in CIFAR-10's own format (the five
python pickles of ``cifar-10-batches-py``) to a temporary folder and reads them from there: the speed does not
depend on the pixels.

Like the ``deepclust`` command, it first sets the C library's allocator up to keep freed memory
(deepclust/host.py; ``DEEPCLUST_TUNE_MALLOC=0`` leaves it as it is), and it reports the page faults per timed
step.

Prints one line per method and writes the rows to ``--out`` (JSON) when given. A method that fails is reported
with its error and the others still run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepclust.config import build_config
from deepclust.engine.trainer import Trainer
from deepclust.errors import UserError
from deepclust.host import tune_allocator
from deepclust.methods import method_class
from deepclust.runs.run_dir import RunDir


def minor_page_faults() -> int:
    """Page faults of this process so far that the kernel served without I/O (0 where the OS does not say)."""
    if sys.platform == "win32":
        return 0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def write_random_cifar10(directory: Path, count: int, seed: int = 0) -> Path:
    """``count`` random images as CIFAR-10's python pickles (five train batches, one test batch) in
    ``directory/cifar-10-batches-py``; returns ``directory``."""
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, part in zip(names, np.array_split(np.arange(count), len(names)), strict=True):
        batch = {
            b"data": rng.integers(0, 256, size=(len(part), 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=len(part)).tolist(),
        }
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return directory


SYNCHRONISING_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profile_steps(run_steps: Any, steps: int, device: torch.device) -> dict[str, Any]:
    """torch.profiler over ``steps`` more steps: the operations the host dispatched per step (top-level ``aten``
    calls, backward included), its waits for the device per step, the share of the wall time the device spent
    in kernels, and the kernels that took most of it."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        wall = run_steps(steps)
    operations = sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )
    events = prof.key_averages()
    waits = {e.key: e.count / steps for e in events if e.key in SYNCHRONISING_CALLS}
    kernels = sorted(
        ((e.key, getattr(e, "self_device_time_total", 0.0)) for e in events if e.device_type.name == "CUDA"),
        key=lambda item: -item[1],
    )
    device_us = sum(us for _, us in kernels)
    return {
        "steps": steps,
        "host_operations_per_step": round(operations / steps),
        "host_waits_per_step": waits,
        "device_busy_share": round(device_us / 1e6 / wall, 3) if device.type == "cuda" else None,
        "top_kernels_ms_per_step": [(name[:80], round(us / 1000 / steps, 3)) for name, us in kernels[:8]],
    }


def time_method(
    method: str,
    dataset: str,
    device: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    windows: int,
    profiled: int = 0,
) -> dict[str, Any]:
    """Median images/s over ``windows`` equal windows of ``steps`` timed steps, after ``warmup`` steps; with
    ``profiled`` > 0, a profile of that many more steps (:func:`profile_steps`)."""
    cfg = build_config(method=method, dataset=dataset, flags={"device": device}, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run").create()
        started = time.perf_counter()
        trainer = Trainer(cfg, run)
        setup_s = time.perf_counter() - started
        target = trainer.fabric.device
        sync = (lambda: torch.cuda.synchronize(target)) if target.type == "cuda" else (lambda: None)
        # the loop's own batches: companions, the extra split and the copy to the device included
        batches = itertools.chain.from_iterable(trainer._epoch_batches(e, 0) for e in itertools.count())

        def run_steps(n: int) -> float:
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                trainer._step(next(batches))
            sync()
            return time.perf_counter() - t0

        warmup_s = run_steps(warmup)  # compilation, cuDNN autotuning and allocator growth happen here
        faults_before = minor_page_faults()
        seconds = [run_steps(steps) for _ in range(windows)]
        faults_per_step = (minor_page_faults() - faults_before) / (steps * windows)
        profile = profile_steps(run_steps, profiled, target) if profiled else None
        if target.type == "cuda":
            peak_gib = torch.cuda.max_memory_allocated(target) / 2**30
            torch.cuda.reset_peak_memory_stats(target)
        else:
            peak_gib = None
    batch = cfg.optim.batch_size
    median_s = statistics.median(seconds)
    return {
        "method": method,
        "dataset": dataset,
        "device": device_name(target),
        "precision": trainer.precision,
        "compile": bool(cfg.train.compile),
        "channels_last": bool(cfg.train.channels_last),
        "backbone": cfg.model.backbone,
        "batch_size": batch,
        "steps": steps,
        "windows": windows,
        "images_per_s": round(steps * batch / median_s, 1),
        "images_per_s_windows": [round(steps * batch / s, 1) for s in seconds],
        "ms_per_step": round(1000 * median_s / steps, 3),
        "page_faults_per_step": round(faults_per_step),
        "setup_and_warmup_s": round(setup_s + warmup_s, 2),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_gib": None if peak_gib is None else round(peak_gib, 3),
        "overrides": overrides,
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--methods", nargs="+", default=["cc", "simclr", "byol", "swav"])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=None, help="write the rows here (JSON)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="STEPS", help="profile this many more steps"
    )
    parser.add_argument(
        "--random-cifar10",
        type=int,
        default=None,
        metavar="N",
        help="time on N random images in CIFAR-10's format",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every method")
    args = parser.parse_args(argv)
    if min(args.steps, args.windows) < 1 or args.warmup < 0:
        parser.error("--steps and --windows must be at least 1, --warmup at least 0")
    try:
        for method in args.methods:  # before any timing: `--methods a b key=value` would take the override
            method_class(method)
    except UserError as err:
        print(f"train_speed: error: {err} (overrides go before --methods or after --)", file=sys.stderr)
        return 2
    tune_allocator()  # as the `deepclust` command does
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = list(args.overrides)
        if args.random_cifar10 is not None:
            if args.dataset != "cifar10" or args.random_cifar10 < 1:
                parser.error("--random-cifar10 N needs --dataset cifar10 and N ≥ 1")
            overrides.append(f"data.root={write_random_cifar10(Path(tmp), args.random_cifar10)}")
        for method in args.methods:
            try:
                row = time_method(
                    method,
                    args.dataset,
                    args.device,
                    overrides,
                    args.steps,
                    args.warmup,
                    args.windows,
                    args.profile,
                )
            except UserError as err:
                print(f"train_speed: error: {err}", file=sys.stderr)
                return 2
            except Exception as err:  # a sweep reports a broken learner and times the others
                traceback.print_exc()
                rows.append(
                    {"method": method, "error": f"{type(err).__name__}: {err}", "overrides": overrides}
                )
                print(f"{method:8s} failed: {type(err).__name__}: {err}", flush=True)
                continue
            rows.append(row)
            print(
                f"{method:8s} {row['precision']:11s} compile={row['compile']!s:5s} batch {row['batch_size']:4d}  "
                f"{row['images_per_s']:10.1f} images/s  {row['ms_per_step']:8.2f} ms/step  "
                f"{row['page_faults_per_step']:6d} page faults/step  "
                f"(setup + warm-up {row['setup_and_warmup_s']} s, peak {row['peak_memory_gib']} GiB)",
                flush=True,
            )
            if row["profile"]:
                print(f"         profile: {json.dumps(row['profile'])}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
        print(f"rows written to {args.out}")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
