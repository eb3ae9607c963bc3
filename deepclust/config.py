"""The one configuration tree of a run: typed sections, merged from defaults, a YAML file and the command line.

Merge order (later wins):

1. the dataclass defaults below (the CPU settings);
2. the method's own defaults (``Method.DEFAULTS``, e.g. CC's Adam at 3e-4) and its ``params`` section;
3. ``configs/<method>/<dataset>.yaml`` when no ``--config`` is given and that file exists;
   otherwise the ``--config FILE``;
4. the explicit command-line flags (``--dataset``, ``--seed``, ``--device``, ...);
5. ``key=value`` overrides, e.g. ``optim.lr=0.01 train.epochs=5``.

Every section is an OmegaConf structured config, so an unknown key or a value of the wrong type is a
:class:`~deepclust.errors.ConfigError` (one line, exit code 2 in the CLI), never a silent typo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deepclust.data.augment import AugmentConfig
from deepclust.errors import ConfigError
from deepclust.evaluation.readout import ReadoutConfig
from deepclust.methods import method_class
from deepclust.models import ModelConfig
from deepclust.validation import check_choice, check_ranges

# shipped inside the package so that a wheel install finds them too; the repository's configs/ links here
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    """Which images to cluster."""

    name: str = "fashion-mnist"
    split: str = "all"  # train+test, the clustering convention
    root: str | None = None  # --data-root; falls back to $DEEPCLUST_DATA and the dataset's system locations
    image_size: int | None = None  # resize for folder-based datasets; None = native size
    folder_labels: bool = False  # `folder` dataset: take labels from first-level sub-folder names
    num_clusters: int | None = None  # K; None = the dataset's number of classes
    # another split of the same dataset that trains only the method's instance-level losses, in a pass over it
    # at the start of every epoch (CC's STL-10 protocol: extra_split=unlabeled); it is never clustered
    extra_split: str | None = None


@dataclass
class KMeansConfig:
    """k-means, both as the baseline on raw pixels and as the read-out on learned features."""

    n_init: int = 10
    max_iter: int = 300
    backend: str = "auto"  # auto (faiss when installed) | faiss | sklearn
    normalize: bool = False  # L2-normalise every feature vector first (cosine k-means); the papers do not
    features: str = "pixels"  # baseline input: pixels, or a trained run directory (same data) to cluster


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "adam"  # adam | adamw | sgd | lars
    lr: float = 3e-4  # the base rate; with lr_scaling linear or sqrt, the rate at a global batch of 256
    lr_scaling: str = "none"  # none | linear (lr * global_batch / 256) | sqrt
    weight_decay: float = 0.0
    momentum: float = 0.9
    # LARS's η (You et al. 2017; BYOL, SwAV); solo-learn's CIFAR recipes use 0.02
    lars_trust_coefficient: float = 0.001
    lars_clip: bool = False  # LARC's clipping: no layer's rate above lr (solo-learn's clip_lr)
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio under the cosine schedule
    # steps: the schedule runs over train.epochs; time: over the time budget (the share of it used so far),
    # so that a budgeted run ends annealed wherever the budget stops it; auto: time when there is a budget
    schedule_over: str = "steps"
    batch_size: int = 256  # per process
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    """The training loop: length, devices, precision, checkpoints, logging."""

    epochs: int = 100
    max_steps: int | None = None
    time_budget_minutes: float | None = None  # stop cleanly at the budget, then evaluate and save
    # auto | 32 | bf16-mixed | 16-mixed; auto is bf16-mixed on GPUs with bf16 (else 16-mixed) and on CPUs with
    # bf16 units, else 32
    precision: str = "auto"
    devices: int = 1  # processes per node (GPUs, or CPU processes with --device cpu)
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp
    sync_batchnorm: bool = True  # under DDP
    compile: bool = False  # torch.compile the backbone (in place; augmentations and heads stay eager)
    channels_last: bool = True
    # GPU only: cuDNN times its convolution algorithms on the first steps and keeps the fastest (the sizes are
    # fixed); the choice may differ between runs, so bit-identical GPU runs need false
    cudnn_benchmark: bool = True
    checkpoint_every_steps: int = 500
    eval_every_epochs: int = 5
    log_every_steps: int = 20
    tensorboard: bool = False
    progress: bool = True
    collapse_warning_fraction: float = 0.5  # warn when one cluster takes more than this share of the samples


@dataclass
class Config:
    """A whole run."""

    method: str = "kmeans"
    name: str | None = None  # run name; default <method>-<dataset>-<timestamp>
    out: str | None = None  # run directory; default runs/<name>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | gpu
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    params: Any = field(default_factory=dict)  # the method's own hyper-parameters (its Config dataclass)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is parsed as YAML (so ``3``, ``0.1``, ``true``, ``[1, 2]`` get their types)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad override {text!r}: expected key=value, e.g. optim.lr=0.01")
    key = key.strip()
    if key in CHOSEN_BY_FLAG:
        raise ConfigError(f"bad override {text!r}: choose it with {CHOSEN_BY_FLAG[key]}")
    try:
        value = OmegaConf.create({"v": raw} if raw == "" else f"v: {raw}")["v"]
    except yaml.YAMLError as err:
        raise ConfigError(f"bad override {text!r}: cannot parse the value ({_yaml_problem(err)})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override {text!r}: cannot parse the value ({_first_line(err)})") from None
    return key, value


# Keys that select which defaults and shipped config apply: set after those are merged, an override would pair
# one method's (or dataset's) settings with another.
CHOSEN_BY_FLAG = {"method": "--method", "data.name": "--dataset"}


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's problem and where, in one line ("found duplicate key epochs (line 3, column 3)")."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _first_line(err: OmegaConfBaseException) -> str:
    """OmegaConf messages carry extra lines (full_key, object_type): keep the sentence."""
    return str(getattr(err, "msg", None) or err).splitlines()[0]


def _section_example(section: DictConfig, name: str) -> str:
    """``name.first_key`` of a section of settings, to show how its keys are written."""
    first = next(iter(section.keys()), None)
    return f"{name}.{first!s}" if first is not None else name


def _check_sections(base: DictConfig, update: Mapping[str, Any], origin: str, prefix: str = "") -> None:
    """A ConfigError where ``update`` gives a plain value (a number, a list, nothing) to what is a section of
    settings in ``base``: OmegaConf's own message for it names its internal classes."""
    for key, value in update.items():
        if not isinstance(key, str) or key not in base:
            continue  # unknown keys are reported by the merge, with the known ones
        current, name = base[key], f"{prefix}{key}"
        if isinstance(current, DictConfig):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{origin}: {name!r} is a section of settings (such as {_section_example(current, name)}): "
                    f"it takes a mapping of them, not {value!r}"
                )
            _check_sections(current, value, origin, f"{name}.")


def _merge(base: DictConfig, update: Mapping[str, Any] | DictConfig, origin: str) -> DictConfig:
    plain = OmegaConf.to_container(update, resolve=False) if isinstance(update, DictConfig) else update
    _check_sections(base, plain, origin)  # type: ignore[arg-type]
    try:
        return OmegaConf.merge(base, update)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        where = f" at {key!r}" if key else ""
        raise ConfigError(f"{origin}: invalid configuration{where}: {_first_line(err)}") from None


def load_yaml(path: str | Path) -> DictConfig:
    """Read a YAML config file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"config file {path} is a directory; pass a YAML file (a run's is {path}/config.yaml)"
        )
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # OmegaConf reads a file that holds one word as {word: None}: the plain YAML says what the file holds
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
        loaded = OmegaConf.load(path) if content is None or isinstance(content, dict) else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read config file {path}: {_yaml_problem(err)}") from None
    except Exception as err:  # OmegaConf's own errors and undecodable bytes: the first line of the message
        raise ConfigError(f"cannot read config file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        held = "a list" if isinstance(content, list) else f"the single value {content!r}"
        raise ConfigError(
            f"config file {path} must contain a mapping of sections (such as optim:), not {held}"
        )
    return loaded


def default_config_file(method: str, dataset: str) -> Path | None:
    """The shipped ``configs/<method>/<dataset>.yaml``, if there is one."""
    candidate = CONFIG_DIR / method / f"{dataset}.yaml"
    return candidate if candidate.is_file() else None


def build_config(
    *,
    method: str | None = None,
    dataset: str | None = None,
    config_file: str | Path | DictConfig | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    origin: str | None = None,
) -> DictConfig:
    """Resolve the full configuration of a run (see the module docstring for the merge order).

    ``config_file`` is a YAML file or its contents (then ``origin`` names them in errors). ``flags`` maps dotted
    keys (``"seed"``, ``"data.root"``, ``"train.time_budget_minutes"``) to the values of explicit command-line
    options; ``None`` values are ignored.
    """
    if isinstance(config_file, DictConfig):
        file_cfg: DictConfig | None = config_file
        config_file = origin or "the configuration"
    else:
        file_cfg = load_yaml(config_file) if config_file is not None else None
    file_method, file_dataset = file_choices(file_cfg, config_file) if file_cfg is not None else (None, None)
    if method is not None and file_method is not None and method != file_method:
        # its params section and settings are another method's: merged silently, they would half apply
        raise ConfigError(f"{config_file} is a config for method {file_method!r}, not --method {method}")
    method = method or file_method or "kmeans"
    dataset = dataset or file_dataset or "fashion-mnist"
    cls = method_class(method)

    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    with _open_dict(cfg):
        cfg.params = OmegaConf.structured(cls.Config) if cls.Config is not None else {}
    cfg = _merge(cfg, cls.DEFAULTS, f"defaults of method {method!r}")
    if file_cfg is None:
        shipped = default_config_file(method, dataset)
        if shipped is not None:
            file_cfg = load_yaml(shipped)
            config_file = shipped
    if file_cfg is not None:
        cfg = _merge(cfg, file_cfg, str(config_file))
    explicit: dict[str, Any] = {"method": method, "data.name": dataset}
    explicit.update({k: v for k, v in (flags or {}).items() if v is not None})
    for key, value in explicit.items():
        _set(cfg, key, value, f"option {key}")
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"override {text!r}")
    try:  # ${...} references, once, here: unresolvable ones would otherwise fail wherever they are first read
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        raise ConfigError(
            f"cannot resolve the configuration{f' at {key!r}' if key else ''}: {_first_line(err)}"
        ) from None
    _validate(cfg)
    return cfg


def file_choices(file_cfg: DictConfig, origin: str | Path | None) -> tuple[str | None, str | None]:
    """The method and dataset a config file names (None where it names none); a ConfigError where the file's
    ``method``, ``data`` or ``data.name`` has the wrong shape."""
    try:
        method, data = file_cfg.get("method"), file_cfg.get("data")
        if data is not None and not isinstance(data, DictConfig):
            raise ConfigError(f"{origin}: section 'data' must be a mapping of settings, got {data!r}")
        dataset = data.get("name") if data is not None else None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{origin}: {_first_line(err)}") from None
    for key, value in (("method", method), ("data.name", dataset)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{origin}: {key} must be a name, got {value!r}")
    return method, dataset


class _open_dict:
    """Temporarily allow new keys (used once, to install the method's params section)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, True)


def _set(cfg: DictConfig, key: str, value: Any, origin: str) -> None:
    current = OmegaConf.select(cfg, key, default="__missing__")
    if current == "__missing__":
        section = key.rsplit(".", 1)[0] if "." in key else ""
        known = OmegaConf.select(cfg, section) if section else cfg
        names = ", ".join(sorted(known.keys())) if isinstance(known, DictConfig) else ""
        hint = f"; known keys{' in ' + section if section else ''}: {names}" if names else ""
        raise ConfigError(f"{origin}: unknown configuration key {key!r}{hint}")
    if isinstance(current, DictConfig):
        raise ConfigError(
            f"{origin}: {key!r} is a section of settings: set them one by one, such as "
            f"{_section_example(current, key)}=..."
        )
    try:
        OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{origin}: {_first_line(err)}") from None


# faiss's k-means takes a C int seed; numpy and torch take more, so this is the tightest bound.
MAX_SEED = 2**31 - 1


def _validate(cfg: DictConfig) -> None:
    """Checks that span sections or that the types alone cannot express."""
    k = cfg.data.num_clusters
    if k is not None and k < 2:
        raise ConfigError(f"data.num_clusters must be at least 2, got {k}")
    if cfg.optim.batch_size < 2:
        raise ConfigError(f"optim.batch_size must be at least 2, got {cfg.optim.batch_size}")
    if cfg.name is not None and (cfg.name.strip() in ("", ".", "..") or "/" in cfg.name or "\\" in cfg.name):
        raise ConfigError(f"name {cfg.name!r} must be a plain folder name (the run goes to runs/NAME)")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {cfg.seed}")
    check_ranges(
        cfg,
        positive=(
            "optim.lr",
            "optim.lars_trust_coefficient",
            "optim.grad_clip",
            "train.time_budget_minutes",
            "train.collapse_warning_fraction",
        ),
        at_least_one=(
            "train.epochs",
            "train.max_steps",
            "train.devices",
            "train.num_nodes",
            "train.checkpoint_every_steps",
            "train.eval_every_epochs",
            "train.log_every_steps",
            "kmeans.n_init",
            "kmeans.max_iter",
        ),
        non_negative=("optim.weight_decay", "optim.warmup_epochs"),
        fraction=("optim.momentum", "optim.min_lr_ratio", "train.collapse_warning_fraction"),
    )
    budget = cfg.train.time_budget_minutes
    if cfg.optim.schedule_over == "time" and budget is None:
        raise ConfigError(
            "optim.schedule_over=time schedules over the time budget: set --time-budget MINUTES"
        )
    if cfg.readout.neighbour_vote < 0:
        raise ConfigError(
            f"readout.neighbour_vote must be 0 (off) or a number of neighbours, got {cfg.readout.neighbour_vote}"
        )
    extra = cfg.data.extra_split
    if extra is not None:
        if not method_class(cfg.method).uses_extra_split:
            raise ConfigError(
                f"data.extra_split: {cfg.method} has no instance-level losses of its own to train on another "
                "split (cc has)"
            )
        if extra == cfg.data.split:
            raise ConfigError(f"data.extra_split: {extra!r} is already the clustered split (data.split)")
    choices = {
        "optim.name": ("adam", "adamw", "sgd", "lars"),
        "optim.schedule": ("cosine", "constant"),
        "optim.schedule_over": ("steps", "time", "auto"),
        "optim.lr_scaling": ("none", "linear", "sqrt"),
        "train.precision": ("auto", "32", "bf16-mixed", "16-mixed"),
        "train.strategy": ("auto", "ddp"),
        "kmeans.backend": ("auto", "faiss", "sklearn"),
    }
    for key, allowed in choices.items():
        check_choice(key, OmegaConf.select(cfg, key), allowed)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved configuration as YAML (what ``config.yaml`` in a run directory holds)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
