"""The ``deepclust`` command.

Sub-commands: ``datasets`` (what is available and where), ``train`` (k-means or a deep method; writes a run
directory), ``evaluate`` (recompute metrics from a run directory). A user error prints one line and exits with
code 2; a run that diverges exits with code 1 after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.table import Table

from deepclust import __version__
from deepclust.errors import UserError
from deepclust.host import tune_allocator

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from deepclust.runs.run_dir import RunDir

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
# Where the run directory's storage fails mid-run (full, over quota, read-only, no permission, failing): one
# line that names the file, not a traceback; the checkpoint written before is intact (written atomically).
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="deepclust",
        description="Deep image clustering: train, evaluate and inspect clustering runs.",
    )
    parser.add_argument("--version", action="version", version=f"deepclust {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    datasets = commands.add_parser(
        "datasets",
        help="list the datasets, whether their files were found and where",
        description=(
            "List every dataset deepclust can load: its classes, image size and splits, and whether its files "
            "were found (where) or how to get them. Files are looked for in --data-root (without it, in "
            "$DEEPCLUST_DATA), then in system locations."
        ),
    )
    datasets.add_argument("--data-root", help="directory to look in first (default: $DEEPCLUST_DATA)")

    train = commands.add_parser(
        "train",
        help="cluster a dataset (k-means or a deep method) into a run directory",
        description=(
            "Cluster a dataset and write a run directory (config.yaml, metrics.json, assignments.csv, "
            "log.jsonl, checkpoints/). Any configuration field but the method and the dataset (--method, "
            "--dataset) can be overridden as key=value, e.g. optim.lr=0.001 train.epochs=5."
        ),
    )
    train.add_argument("--method", help="kmeans (default) or a deep method (an unknown name lists them all)")
    train.add_argument("--dataset", help="dataset name (see `deepclust datasets`), default fashion-mnist")
    train.add_argument("--config", help="YAML configuration file")
    train.add_argument("--out", help="run directory (default runs/<name>)")
    train.add_argument("--name", help="run name (default <method>-<dataset>-<time>)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    train.add_argument(
        "--data-root", help="where the dataset files are (default: $DEEPCLUST_DATA, then system paths)"
    )
    train.add_argument("--clusters", type=int, help="number of clusters K (default: the number of classes)")
    train.add_argument("--epochs", type=int, help="training epochs")
    train.add_argument(
        "--time-budget", type=float, metavar="MINUTES", help="stop training cleanly after MINUTES"
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue from the last checkpoint of RUN_DIR (or of --out)",
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")

    evaluate = commands.add_parser(
        "evaluate",
        help="recompute and print the metrics of a run directory",
        description=(
            "Recompute ACC, NMI and ARI of every read-out from RUN_DIR/assignments.csv and its labels, and print "
            "them (runs of data without labels have none)."
        ),
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    return parser


_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_default_formatwarning = warnings.formatwarning


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """deepclust's own warnings (a collapse, skipped files) as one line for the user; other libraries' warnings
    keep Python's format, which says where they come from."""
    if filename.startswith(_PACKAGE_DIR):
        return f"deepclust: warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``train``'s ``key=value`` overrides allowed anywhere among its options (argparse
    alone takes only the first unbroken run of them; ``parse_intermixed_args`` does not support sub-commands)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "train":
        overrides = [arg for arg in unknown if "=" in arg and not arg.startswith("-")]
        args.overrides = [*args.overrides, *overrides]
        unknown = [arg for arg in unknown if arg not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _is_secondary_process() -> bool:
    """A process that torchrun or Fabric's launcher started besides the first one (rank 0 reports)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()  # keep the memory a CPU step frees for the next one (deepclust/host.py)
    args = parse_args(argv)
    warnings.formatwarning = _format_warning
    console = Console()
    try:
        handler = {"datasets": cmd_datasets, "train": cmd_train, "evaluate": cmd_evaluate}[args.command]
        return handler(args, console)
    except UserError as err:
        if not _is_secondary_process():  # every process of a distributed run meets the same error
            print(f"deepclust: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "deepclust: interrupted; a training run continues with `deepclust train --resume RUN_DIR`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def cmd_datasets(args: argparse.Namespace, console: Console) -> int:
    from deepclust.data import list_datasets

    _check_data_root(args.data_root)
    table = Table(title="deepclust datasets")
    for column in ("name", "classes", "size", "splits", "status"):
        table.add_column(column)
    table.add_column("where / how to get it", overflow="fold")  # a path cut short with "…" is no use
    for info in list_datasets():
        found = info.locate(args.data_root)
        size = f"{info.channels}×{info.resolution}×{info.resolution}" if info.resolution else "any"
        table.add_row(
            info.name,
            str(info.num_classes or "-"),
            size,
            ", ".join(info.splits),
            "[green]found[/]" if found else "[yellow]missing[/]",
            str(found) if found else info.how_to_get,
        )
    console.print(table)
    return 0


def _check_data_root(data_root: str | None) -> None:
    """A ``--data-root`` that is not a folder is a typo: the search would silently go on to other places."""
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise UserError(f"--data-root {data_root} is not a directory")


def _resolve_train_config(args: argparse.Namespace) -> tuple[Any, Path, bool]:
    """(config, run directory, resume?) from the command line."""
    from deepclust.config import build_config, file_choices, load_yaml
    from deepclust.runs.run_dir import CONFIG, RunDir

    _check_data_root(args.data_root)
    flags = {
        "seed": args.seed,
        "device": args.device,
        "name": args.name,
        "data.root": args.data_root,
        "data.num_clusters": args.clusters,
        "train.epochs": args.epochs,
        "train.time_budget_minutes": args.time_budget,
    }
    resume = args.resume is not None
    if resume:
        target = args.resume or args.out
        if not target:
            raise UserError("--resume needs a run directory: --resume RUN_DIR (or --out RUN_DIR --resume)")
        if args.config is not None:
            raise UserError(
                "--config cannot be used with --resume: the run's own config.yaml is used; change settings with "
                "key=value"
            )
        if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UserError(
                f"--out {args.out} differs from --resume {args.resume}: a resumed run stays where it is"
            )
        run = RunDir.open_existing(target)
        saved = load_yaml(run.path / CONFIG)
        saved_method, saved_dataset = file_choices(saved, run.path / CONFIG)
        if saved_method is None or saved_dataset is None:
            raise UserError(f"{run.path / CONFIG} is damaged: it names no method or no dataset")
        for given, saved_value in (("method", saved_method), ("dataset", saved_dataset)):
            value = getattr(args, given)
            if value is not None and value != saved_value:
                raise UserError(f"--{given} {value} differs from the resumed run's {saved_value}")
        cfg = build_config(config_file=run.path / CONFIG, flags=flags, overrides=args.overrides)
        if cfg.optim.name != saved.optim.name:
            # the optimiser state in the checkpoint is the old optimiser's; another would load it silently
            raise UserError(f"optim.name={cfg.optim.name} differs from the resumed run's {saved.optim.name}")
        cfg.out = str(run.path)
        return cfg, run.path, True
    cfg = build_config(
        method=args.method,
        dataset=args.dataset,
        config_file=args.config,
        flags=flags,
        overrides=args.overrides,
    )
    if cfg.name is None:
        cfg.name = f"{cfg.method}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out or cfg.out or Path("runs") / cfg.name)
    if RunDir(out).last_checkpoint.is_file():
        raise UserError(
            f"{out} already holds a training run; continue it with --resume {out}, or pick another --out"
        )
    if (out / "metrics.json").is_file():  # a finished k-means run: its results would be overwritten
        raise UserError(f"{out} already holds a finished run; pick another --out (or delete {out})")
    cfg.out = str(out)
    return cfg, out, False


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from deepclust.runs.run_dir import RunDir

    cfg, out, resume = _resolve_train_config(args)
    # the outermost folder this call creates (runs/ itself on a first run), removed again if the run never starts
    created = next((folder for folder in reversed([out, *out.parents]) if not folder.exists()), None)
    run = RunDir(out).create()
    try:
        return _train_in(run, cfg, resume, console)
    except BaseException:  # a user error, a crash or Ctrl-C: a run with no checkpoint has nothing to resume
        if created is not None and not run.last_checkpoint.is_file():
            shutil.rmtree(created, ignore_errors=True)
        raise


def _train_in(run: RunDir, cfg: DictConfig, resume: bool, console: Console) -> int:
    """Train (or run k-means) into the run directory ``run``; returns the exit code."""
    from deepclust.methods import method_class

    if not resume:  # a resumed run's config.yaml changes only once its checkpoint has loaded (the trainer)
        run.save_config(cfg)
    if not method_class(cfg.method).trainable:
        if resume:
            raise UserError(f"method {cfg.method!r} is not trained, so there is nothing to resume")
        from deepclust.engine.kmeans_baseline import run_kmeans

        metrics = run_kmeans(cfg, run, console)
    else:
        from deepclust.engine.trainer import TrainingDiverged, TrainingInterrupted, train

        try:
            metrics = train(cfg, run, resume=resume)
        except TrainingDiverged as err:
            print(f"deepclust: training stopped: {err}", file=sys.stderr)
            return 1
        except TrainingInterrupted as err:
            print(f"deepclust: {err}; continue with: deepclust train --resume {run.path}", file=sys.stderr)
            return 128 + err.signal_number  # the shell's code for a process stopped by that signal
        except OSError as err:
            if err.errno not in STORAGE_ERRORS:
                raise
            if not _is_secondary_process():
                print(
                    f"deepclust: error: cannot write {err.filename or 'to the run directory'}: {err.strerror}; "
                    f"the last checkpoint is intact: continue with: deepclust train --resume {run.path}",
                    file=sys.stderr,
                )
            return 1
    if not metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    print_metrics(console, metrics, f"{cfg.method} on {cfg.data.name}")
    console.print(f"results written to [bold]{run.path}[/] (metrics.json, assignments.csv, log.jsonl)")
    return 0


def cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    from deepclust.evaluation import evaluate_clustering
    from deepclust.runs.run_dir import RunDir

    run = RunDir.open_existing(args.run_dir)
    clusters, labels, primary = run.read_assignments()
    if labels is None:
        raise UserError(f"{run.path} has no ground-truth labels, so ACC/NMI/ARI cannot be computed")
    readouts = {name: evaluate_clustering(labels, predicted) for name, predicted in clusters.items()}
    print_metrics(console, {**readouts[primary], "primary": primary, "readouts": readouts}, str(run.path))
    return 0


def print_metrics(console: Console, metrics: dict[str, Any], title: str) -> None:
    """A table with one row per read-out; the primary read-out first."""
    readouts: dict[str, dict[str, float]] = metrics.get("readouts", {})
    primary = metrics.get("primary")
    table = Table(title=title)
    for column in ("read-out", "ACC", "NMI", "ARI"):
        table.add_column(column, justify="right" if column != "read-out" else "left")
    order = sorted(readouts, key=lambda name: (name != primary, name))
    for name in order:
        values = readouts[name]
        cells = [f"{values[key]:.4f}" if key in values else "-" for key in ("acc", "nmi", "ari")]
        table.add_row(f"{name}{' (primary)' if name == primary else ''}", *cells)
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
