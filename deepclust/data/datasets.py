"""The dataset registry: where each dataset's files are looked for and how they load as an ArrayDataset.

Every dataset loads into one uint8 N×C×H×W array plus int64 labels. Root resolution: the ``root`` argument
when given, else ``$DEEPCLUST_DATA``; each loader then tries that folder, its conventional sub-folders (for
example ``cifar-10-batches-py``) and dataset-specific system locations, in that order.

``split="all"`` is train+test, the usual protocol in deep clustering. Sizes of the splits:

* ``digits`` has only ``all`` (1,797 images; scikit-learn ships no train/test split). Its pixel values 0..16
  are scaled to 0..255 with ``x * 255 // 16``.
* ``stl10`` adds ``unlabeled`` (100,000 images, no labels), memory-mapped, never read as a whole.
* ``imagenet10`` / ``imagenet-dogs``: ``train`` is ``train/<wnid>/``, ``test`` is ``val/<wnid>/`` (the
  ILSVRC validation images sorted into WNID folders); a flat ``<wnid>/`` layout counts as ``train``, and
  ``all`` is train plus val when ``val/`` is sorted into WNID folders (the official flat ``val/`` is
  ignored). CC's "ImageNet-10 (13,000 images)" is the ``train`` split.
* ``tiny-imagenet``: ``train`` (100,000), ``test`` is the labelled ``val`` set (10,000).

Class indices of the ImageNet-style sets follow the sorted WNID order (as torchvision's ``ImageFolder``).
Folder-based sets are decoded once into a cache (see :mod:`deepclust.data.image_folder`); each split is a
cache entry of its own, so loading ``train`` after ``all`` decodes the train images again.
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepclust.data import formats
from deepclust.data.image_folder import IMAGE_EXTENSIONS, default_cache_dir, find_images, load_image_files
from deepclust.errors import DatasetNotFoundError, UserError

# The largest image side the decoded-image cache and the views accept: far above the papers' 224 px, and far below
# the sizes whose batches no machine can hold (a typo such as 100000 would otherwise fail deep in an allocator).
MAX_IMAGE_SIZE = 2048

ENV_DATA = "DEEPCLUST_DATA"

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Debian's dataset-fashion-mnist package installs the four gzipped IDX files here.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Seconds a Fashion-MNIST download may wait on the network before giving up.
_DOWNLOAD_TIMEOUT = 30.0

# WNID -> class name; the WNID lists are those of the CC and SIC repositories.
IMAGENET10_CLASSES: dict[str, str] = {
    "n02056570": "king penguin",
    "n02085936": "Maltese dog",
    "n02128757": "snow leopard",
    "n02690373": "airliner",
    "n02692877": "airship",
    "n03095699": "container ship",
    "n04254680": "soccer ball",
    "n04285008": "sports car",
    "n04467665": "trailer truck",
    "n07747607": "orange",
}
IMAGENET_DOGS_CLASSES: dict[str, str] = {
    "n02085936": "Maltese dog",
    "n02086646": "Blenheim spaniel",
    "n02088238": "basset",
    "n02091467": "Norwegian elkhound",
    "n02097130": "giant schnauzer",
    "n02099601": "golden retriever",
    "n02101388": "Brittany spaniel",
    "n02101556": "clumber",
    "n02102177": "Welsh springer spaniel",
    "n02105056": "groenendael",
    "n02105412": "kelpie",
    "n02105855": "Shetland sheepdog",
    "n02107142": "Doberman",
    "n02110958": "pug",
    "n02112137": "chow",
}
# Side of the square images decoded from ImageNet folders when no image_size is given.
IMAGENET_DEFAULT_SIZE = 96

_ALIASES = {
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar100": "cifar100-20",
    "cifar-100": "cifar100-20",
    "cifar-100-20": "cifar100-20",
    "stl-10": "stl10",
    "imagenet-10": "imagenet10",
    "imagenetdogs": "imagenet-dogs",
    "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
}


@dataclass
class ArrayDataset:
    """Images as uint8 N×C×H×W (numpy array, possibly np.memmap for large sets), labels int64 (N,) or None."""

    name: str
    images: np.ndarray  # uint8, N×C×H×W, C in {1, 3}
    labels: np.ndarray | None = None  # int64, values 0..num_classes-1
    num_classes: int | None = None  # number of ground-truth classes (None when unknown)
    class_names: list[str] | None = None
    # Paths relative to the dataset folder for folder-based datasets, else None (the row index is the id).
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        """Check shapes and types, and store labels as int64."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            shape = f"{self.images.dtype} {self.images.shape}"
            raise ValueError(f"images must be uint8 N×C×H×W with C in {{1, 3}}, got {shape}")
        n = len(self.images)
        if self.labels is not None:
            if not np.issubdtype(self.labels.dtype, np.integer) or self.labels.shape != (n,):
                raise ValueError(f"labels must be {n} integers, got {self.labels.dtype} {self.labels.shape}")
            self.labels = self.labels.astype(np.int64, copy=False)
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} images")
        if (
            self.class_names is not None
            and self.num_classes is not None
            and len(self.class_names) != self.num_classes
        ):
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        """(uint8 C×H×W tensor, label or -1, row index)."""
        n = len(self.images)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        # A copy: memory-mapped rows are read-only and may be non-contiguous (STL-10).
        image = torch.from_numpy(np.array(self.images[index], dtype=np.uint8, order="C"))
        label = int(self.labels[index]) if self.labels is not None else -1
        return image, label, index

    def __repr__(self) -> str:
        """A one-line summary (the default would print the whole array)."""
        return (
            f"ArrayDataset(name={self.name!r}, size={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}, labelled={self.labels is not None})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The rows ``indices`` (integer positions or a boolean mask), read into memory."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        return ArrayDataset(
            name=self.name,
            images=np.asarray(self.images[idx]),
            labels=None if self.labels is None else self.labels[idx],
            num_classes=self.num_classes,
            class_names=None if self.class_names is None else list(self.class_names),
            ids=None if self.ids is None else [self.ids[i] for i in idx],
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before loading it, and where its files are."""

    name: str
    description: str
    num_classes: int | None  # None for `folder`
    resolution: int | None  # native H = W in pixels (None for `folder`)
    channels: int | None
    splits: tuple[str, ...]
    how_to_get: str  # one or two sentences telling the user how to obtain the files
    _finder: Callable[[Path | None], Path | None] = field(repr=False, compare=False)

    def locate(self, root: str | Path | None) -> Path | None:
        """Where this dataset's files were found (``root`` or else ``$DEEPCLUST_DATA`` first), else None."""
        return self._finder(None if root is None else Path(root).expanduser())


@dataclass(frozen=True)
class _Request:
    """One load_dataset call, as the loaders see it."""

    info: DatasetInfo
    split: str
    root: Path | None  # the explicit root argument, not yet resolved against $DEEPCLUST_DATA
    image_size: int | None
    folder_labels: bool
    cache_dir: Path | None


def default_data_root() -> Path | None:
    """``$DEEPCLUST_DATA`` when set (and not empty), else None."""
    env = os.environ.get(ENV_DATA)
    return Path(env).expanduser() if env else None


def _base(root: Path | None) -> Path | None:
    """The explicit root, else ``$DEEPCLUST_DATA``."""
    return root if root is not None else default_data_root()


def _candidates(root: Path | None, subdirs: Sequence[str], system: Sequence[Path] = ()) -> list[Path]:
    """The folders to search, in order and without repeats: the data root, its sub-folders, system places."""
    base = _base(root)
    found = [base, *(base / s for s in subdirs)] if base is not None else []
    return list(dict.fromkeys([*found, *system]))


def _first(candidates: Sequence[Path], complete: Callable[[Path], bool]) -> Path | None:
    """The first existing candidate folder that holds a complete copy of the files."""
    return next((c for c in candidates if c.is_dir() and complete(c)), None)


def _not_found(request: _Request, looked: Sequence[Path], detail: str = "") -> DatasetNotFoundError:
    """A DatasetNotFoundError naming the places searched and how to get the files."""
    where = ", ".join(str(p) for p in looked) or "nowhere"
    hint = "" if _base(request.root) else f" (no data root given: pass --data-root DIR or set ${ENV_DATA})"
    detail = f"{detail}; " if detail else ""
    return DatasetNotFoundError(
        f"{request.info.name}: {detail}files not found, looked in {where}{hint}. {request.info.how_to_get}"
    )


def _signature(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of each file, so the in-process cache notices a replaced file."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


_Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


@functools.lru_cache(maxsize=6)
def _cached_arrays(
    reader: Callable[[Path, str], _Arrays], directory: Path, split: str, signature: tuple[object, ...]
) -> _Arrays:
    """Read a split once per process; the arrays are made read-only because every caller shares them."""
    images, labels, names = reader(directory, split)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels, names


def _parts(split: str) -> tuple[str, ...]:
    """The stored splits that make up ``split`` (``all`` is train then test)."""
    return ("train", "test") if split == "all" else (split,)


def _check_fixed_size(request: _Request) -> None:
    """Refuse an ``image_size`` other than the native one of a fixed-resolution dataset."""
    resolution = request.info.resolution
    if request.image_size is not None and request.image_size != resolution:
        raise UserError(
            f"{request.info.name} has a fixed {resolution}×{resolution} resolution; image_size="
            f"{request.image_size} applies only to folder-based datasets (training resizes on the fly)"
        )


# ---------------------------------------------------------------- Fashion-MNIST


def _idx_file(directory: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``directory`` (the uncompressed one first: it is faster to read)."""
    return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)


def _has_fashion(directory: Path) -> bool:
    """True when ``directory`` holds all four Fashion-MNIST IDX files (each gzipped or not)."""
    return all(_idx_file(directory, stem) for pair in _FASHION_FILES.values() for stem in pair)


def _fashion_candidates(root: Path | None, cache_dir: Path | None) -> list[Path]:
    """Folders that may hold Fashion-MNIST, ending with the Debian path and the download cache."""
    downloaded = (cache_dir or default_cache_dir()) / "FashionMNIST" / "raw"
    subdirs = ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist")
    return _candidates(root, subdirs, (*FASHION_MNIST_SYSTEM_DIRS, downloaded))


def _read_fashion(directory: Path, split: str) -> _Arrays:
    """Parse the IDX files of ``split`` into (N×1×28×28 images, labels, class names)."""
    images, labels = [], []
    for part in _parts(split):
        image_stem, label_stem = _FASHION_FILES[part]
        image_file, label_file = _idx_file(directory, image_stem), _idx_file(directory, label_stem)
        assert image_file is not None and label_file is not None  # checked by _has_fashion
        part_images, part_labels = formats.read_idx(image_file, 3), formats.read_idx(label_file, 1)
        if len(part_images) != len(part_labels) or part_labels.max(initial=0) >= 10:
            raise UserError(f"{directory}: {part} images and labels do not match; download the files again")
        images.append(part_images[:, None])
        labels.append(part_labels.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels), FASHION_MNIST_CLASSES


def _download_fashion_mnist(target: Path) -> Path:
    """Download Fashion-MNIST with torchvision into ``target/FashionMNIST/raw`` and return that folder."""
    from torchvision.datasets import FashionMNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT)  # urllib waits forever on a silent network otherwise
    try:
        for train in (True, False):
            FashionMNIST(root=str(target), train=train, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return target / "FashionMNIST" / "raw"


def _load_fashion(request: _Request) -> ArrayDataset:
    """Fashion-MNIST from disk, downloading it with torchvision when no copy is found."""
    _check_fixed_size(request)
    candidates = _fashion_candidates(request.root, request.cache_dir)
    directory = _first(candidates, _has_fashion)
    if directory is None:
        target = request.cache_dir or default_cache_dir()
        try:
            directory = _download_fashion_mnist(target)
        except (OSError, RuntimeError, ValueError, http.client.HTTPException) as err:
            raise _not_found(request, candidates, f"download into {target} failed ({err})") from err
        if not _has_fashion(directory):
            raise _not_found(request, candidates, f"the download into {target} is incomplete")
    files = [_idx_file(directory, s) for part in _parts(request.split) for s in _FASHION_FILES[part]]
    images, labels, names = _cached_arrays(
        _read_fashion, directory, request.split, _signature([f for f in files if f])
    )
    return ArrayDataset("fashion-mnist", images, labels, 10, list(names))


# ---------------------------------------------------------------- digits


def _digits_file() -> Path:
    """The CSV that scikit-learn's ``load_digits`` reads."""
    return Path(str(resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))


def _read_digits(_directory: Path, _split: str) -> _Arrays:
    """scikit-learn's digits as (N×1×8×8 uint8 images, labels, class names)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; x * 255 // 16 maps them onto the full uint8 range (16 -> 255).
    images = (bunch.images.astype(np.int64) * 255 // 16).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64), tuple(str(d) for d in range(10))


def _load_digits(request: _Request) -> ArrayDataset:
    """scikit-learn's 1,797 handwritten digits (split ``all`` only)."""
    _check_fixed_size(request)
    path = _digits_file()
    images, labels, names = _cached_arrays(_read_digits, path.parent, "all", _signature([path]))
    return ArrayDataset("digits", images, labels, 10, list(names))


# ---------------------------------------------------------------- CIFAR


_CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_FILES = {"train": ("train",), "test": ("test",)}


def _has_files(files: dict[str, tuple[str, ...]]) -> Callable[[Path], bool]:
    """A predicate: does a folder hold every file named in ``files``?"""
    return lambda d: all((d / name).is_file() for names in files.values() for name in names)


def _read_cifar10(directory: Path, split: str) -> _Arrays:
    """Concatenate the CIFAR-10 batches of ``split``; class names from ``batches.meta`` when present."""
    images, labels = [], []
    for part in _parts(split):
        for name in _CIFAR10_FILES[part]:
            path = directory / name
            batch = formats.read_cifar_pickle(path)
            part_images = formats.cifar_images(batch, path)
            part_labels = formats.cifar_labels(batch, "labels", 10, path)
            if part_labels is None or len(part_labels) != len(part_images):
                raise UserError(f"{path}: 'labels' missing or not one per image; download the dataset again")
            images.append(part_images)
            labels.append(part_labels)
    names = formats.CIFAR10_CLASSES
    if (directory / "batches.meta").is_file():
        meta = directory / "batches.meta"
        names = _checked_names(formats.read_cifar_pickle(meta).get("label_names", names), 10, meta)
    return np.concatenate(images), np.concatenate(labels), names


def _checked_names(names: Any, count: int, source: Path) -> tuple[str, ...]:
    """``count`` class names read from ``source``, or a :class:`UserError` that says the file is damaged."""
    if (
        not isinstance(names, list | tuple)
        or len(names) != count
        or not all(isinstance(n, str) for n in names)
    ):
        found = len(names) if isinstance(names, list | tuple) else type(names).__name__
        raise UserError(f"{source}: expected {count} class names, found {found}; download the dataset again")
    return tuple(names)


def _read_cifar100(directory: Path, split: str) -> _Arrays:
    """CIFAR-100 images with superclass labels (``coarse_labels``, or fine labels mapped)."""
    images, labels = [], []
    for part in _parts(split):
        path = directory / part
        batch = formats.read_cifar_pickle(path)
        part_images = formats.cifar_images(batch, path)
        coarse = formats.cifar_labels(batch, "coarse_labels", 20, path)
        if coarse is None:
            fine = formats.cifar_labels(batch, "fine_labels", 100, path)
            if fine is None:
                raise UserError(f"{path}: neither 'coarse_labels' nor 'fine_labels' found")
            coarse = formats.cifar100_coarse(fine)
        if len(coarse) != len(part_images):
            raise UserError(f"{path}: {len(coarse)} labels for {len(part_images)} images")
        images.append(part_images)
        labels.append(coarse)
    names = formats.CIFAR100_COARSE_NAMES
    if (directory / "meta").is_file():
        meta = directory / "meta"
        names = _checked_names(formats.read_cifar_pickle(meta).get("coarse_label_names", names), 20, meta)
    return np.concatenate(images), np.concatenate(labels), names


def _cifar_loader(
    name: str,
    subdirs: tuple[str, ...],
    files: dict[str, tuple[str, ...]],
    meta: str,
    reader: Callable[[Path, str], _Arrays],
    num_classes: int,
) -> tuple[Callable[[Path | None], Path | None], Callable[[_Request], ArrayDataset]]:
    """(finder, loader) for one of the CIFAR pickles layouts."""

    def finder(root: Path | None) -> Path | None:
        """Where the files are, or None."""
        return _first(_candidates(root, subdirs), _has_files(files))

    def load(request: _Request) -> ArrayDataset:
        """Load ``request.split`` of this dataset."""
        _check_fixed_size(request)
        directory = finder(request.root)
        if directory is None:
            raise _not_found(request, _candidates(request.root, subdirs))
        paths = [directory / f for part in _parts(request.split) for f in files[part]]
        if (directory / meta).is_file():
            paths.append(directory / meta)
        images, labels, names = _cached_arrays(reader, directory, request.split, _signature(paths))
        return ArrayDataset(name, images, labels, num_classes, list(names))

    return finder, load


# ---------------------------------------------------------------- STL-10


_STL10_SUBDIRS = ("stl10_binary", "stl10/stl10_binary", "stl10")
_STL10_LABELLED = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def _find_stl10(root: Path | None) -> Path | None:
    """The folder holding the labelled STL-10 binaries, or None."""
    return _first(
        _candidates(root, _STL10_SUBDIRS), lambda d: all((d / f).is_file() for f in _STL10_LABELLED)
    )


def _load_stl10(request: _Request) -> ArrayDataset:
    """STL-10 from its binaries; single splits stay memory-mapped."""
    _check_fixed_size(request)
    directory = _find_stl10(request.root)
    if directory is None:
        raise _not_found(request, _candidates(request.root, _STL10_SUBDIRS))
    names = list(formats.STL10_CLASSES)
    names_file = directory / "class_names.txt"
    if names_file.is_file():
        lines = names_file.read_text(errors="replace").splitlines()
        names = list(_checked_names([line.strip() for line in lines if line.strip()], 10, names_file))
    if request.split == "unlabeled":
        path = directory / "unlabeled_X.bin"
        if not path.is_file():
            raise _not_found(request, [directory], "unlabeled_X.bin is missing")
        return ArrayDataset("stl10", formats.read_stl10_images(path), None, 10, names)
    images, labels = [], []
    for part in _parts(request.split):
        part_images = formats.read_stl10_images(directory / f"{part}_X.bin")
        images.append(part_images)
        labels.append(formats.read_stl10_labels(directory / f"{part}_y.bin", len(part_images)))
    # One split stays a memory-mapped view; train+test is read into one array (13,000 images, 360 MB).
    all_images = images[0] if len(images) == 1 else np.concatenate(images)
    return ArrayDataset("stl10", all_images, np.concatenate(labels), 10, names)


# ---------------------------------------------------------------- ImageNet subsets


def _imagenet_subdirs(name: str) -> tuple[str, ...]:
    """Sub-folders of the data root where an ImageNet subset may live."""
    own = (
        ("imagenet10", "imagenet-10", "ImageNet-10")
        if name == "imagenet10"
        else ("imagenet-dogs", "ImageNet-dogs")
    )
    return (*own, "imagenet", "ImageNet", "ILSVRC/Data/CLS-LOC")


def _wnid_dirs(base: Path, wnids: Sequence[str]) -> tuple[Path, dict[str, Path]]:
    """(train folder, WNID -> its folder) for ``base``: ``base/train/<wnid>`` or a flat ``base/<wnid>``."""
    train = base / "train" if (base / "train").is_dir() else base
    return train, {w: train / w for w in wnids if (train / w).is_dir()}


def _imagenet_finder(name: str, wnids: Sequence[str]) -> Callable[[Path | None], Path | None]:
    """A finder returning the first folder that has every WNID of the subset."""

    def finder(root: Path | None) -> Path | None:
        """Where the files are, or None."""
        return _first(
            _candidates(root, _imagenet_subdirs(name)), lambda b: len(_wnid_dirs(b, wnids)[1]) == len(wnids)
        )

    return finder


def _images_per_wnid(request: _Request, folder: Path, wnids: Sequence[str]) -> dict[str, list[Path]]:
    """The image files of each WNID folder under ``folder``; a missing or empty one is an error naming it."""
    files = {w: find_images(folder / w) if (folder / w).is_dir() else [] for w in wnids}
    missing = [w for w, found in files.items() if not found]
    if missing:
        raise _not_found(request, [folder], f"no images for WNID(s) {' '.join(missing)} in {folder}")
    return files


def _imagenet_loader(name: str, classes: dict[str, str]) -> Callable[[_Request], ArrayDataset]:
    """The loader of one ImageNet subset (ImageNet-10 or ImageNet-Dogs)."""
    wnids = sorted(classes)

    def load(request: _Request) -> ArrayDataset:
        """Load ``request.split`` of this dataset."""
        candidates = _candidates(request.root, _imagenet_subdirs(name))
        bases = [b for b in candidates if b.is_dir()]
        complete = [b for b in bases if len(_wnid_dirs(b, wnids)[1]) == len(wnids)]
        if not complete:
            partial = max(bases, key=lambda b: len(_wnid_dirs(b, wnids)[1]), default=None)
            if partial is not None and _wnid_dirs(partial, wnids)[1]:
                train, present = _wnid_dirs(partial, wnids)
                missing = " ".join(w for w in wnids if w not in present)
                raise _not_found(request, candidates, f"WNID folder(s) {missing} are missing in {train}")
            raise _not_found(request, candidates)
        base = complete[0]
        train, _ = _wnid_dirs(base, wnids)
        # The official validation set is one flat folder; only a val/ sorted into WNID folders is used.
        sorted_val = any((base / "val" / w).is_dir() for w in wnids)
        if request.split == "test" and not sorted_val:
            raise _not_found(request, [base], "the test split needs val/<wnid>/ folders")
        folders = [train] if request.split in ("train", "all") else []
        if request.split in ("test", "all") and sorted_val:
            folders.append(base / "val")
        label_of: dict[Path, int] = {}
        for folder in folders:
            per_wnid = _images_per_wnid(request, folder, wnids)
            for label, wnid in enumerate(wnids):
                label_of.update(dict.fromkeys(per_wnid[wnid], label))
        decoded = load_image_files(
            name,
            base,
            list(label_of),
            image_size=request.image_size or IMAGENET_DEFAULT_SIZE,
            channels=3,
            cache_dir=request.cache_dir,
        )
        by_id = {p.relative_to(base).as_posix(): label for p, label in label_of.items()}
        labels = np.array([by_id[i] for i in decoded.ids], dtype=np.int64)
        return ArrayDataset(
            name, decoded.images, labels, len(wnids), [classes[w] for w in wnids], decoded.ids
        )

    return load


# ---------------------------------------------------------------- Tiny ImageNet


_TINY_SUBDIRS = ("tiny-imagenet-200", "tiny-imagenet")


def _find_tiny(root: Path | None) -> Path | None:
    """The ``tiny-imagenet-200`` folder (with ``wnids.txt`` and ``train/``), or None."""
    return _first(
        _candidates(root, _TINY_SUBDIRS), lambda d: (d / "wnids.txt").is_file() and (d / "train").is_dir()
    )


def _tiny_class_names(directory: Path, wnids: Sequence[str]) -> list[str]:
    """First synonym of each WNID from ``words.txt`` (``wnid<TAB>name, name, ...``), else the WNID itself."""
    words: dict[str, str] = {}
    if (directory / "words.txt").is_file():
        for line in (directory / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return [words.get(w) or w for w in wnids]


def _tiny_val_files(request: _Request, directory: Path, label_index: dict[str, int]) -> dict[Path, int]:
    """Validation images and labels from ``val/val_annotations.txt`` (file, WNID, box, tab-separated)."""
    annotations = directory / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _not_found(request, [directory], "val/val_annotations.txt is missing")
    files: dict[Path, int] = {}
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_index:
            raise UserError(
                f"{annotations}:{number}: expected 'file<TAB>wnid<TAB>box', with a WNID of wnids.txt"
            )
        files[directory / "val" / "images" / fields[0]] = label_index[fields[1]]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise _not_found(
            request, [directory / "val" / "images"], f"{len(missing)} validation image(s) missing"
        )
    return files


def _load_tiny(request: _Request) -> ArrayDataset:
    """Tiny ImageNet: ``train/<wnid>/images`` and the annotated ``val/images``."""
    directory = _find_tiny(request.root)
    if directory is None:
        raise _not_found(request, _candidates(request.root, _TINY_SUBDIRS))
    wnids = sorted({w.strip() for w in (directory / "wnids.txt").read_text().split() if w.strip()})
    label_index = {w: i for i, w in enumerate(wnids)}
    label_of: dict[Path, int] = {}
    if request.split in ("train", "all"):
        missing = [w for w in wnids if not (directory / "train" / w).is_dir()]
        if missing:
            raise _not_found(
                request, [directory / "train"], f"train folder(s) missing for {' '.join(missing[:10])}"
            )
        for wnid in wnids:
            label_of.update(dict.fromkeys(find_images(directory / "train" / wnid), label_index[wnid]))
    if request.split in ("test", "all"):
        label_of.update(_tiny_val_files(request, directory, label_index))
    decoded = load_image_files(
        "tiny-imagenet",
        directory,
        list(label_of),
        image_size=request.image_size or 64,
        channels=3,
        cache_dir=request.cache_dir,
    )
    by_id = {p.relative_to(directory).as_posix(): label for p, label in label_of.items()}
    labels = np.array([by_id[i] for i in decoded.ids], dtype=np.int64)
    names = _tiny_class_names(directory, wnids)
    return ArrayDataset("tiny-imagenet", decoded.images, labels, len(wnids), names, decoded.ids)


# ---------------------------------------------------------------- any folder


def _find_folder(root: Path | None) -> Path | None:
    """The folder dataset lives exactly at ``root``."""
    return root if root is not None and root.is_dir() else None


def _load_folder(request: _Request) -> ArrayDataset:
    """Every image under the folder ``root``; labels from first-level sub-folders when ``folder_labels``.

    Sizes: ``image_size`` when given, else the median of the images' shorter sides, at most 128 px; each image
    (turned upright by its EXIF orientation) has its shorter side resized to that size and is centre-cropped to
    a square. Linked sub-folders are followed. One channel when every image is
    grayscale, else RGB (transparency composited on white, palette / CMYK / 16-bit converted).
    """
    if request.root is None:
        raise UserError(
            "the folder dataset needs the image folder as its root: pass --data-root DIR (root=DIR)"
        )
    directory = request.root
    if not directory.is_dir():
        raise UserError(f"folder dataset: {directory} is not a directory")
    files = find_images(directory)
    if not files:
        raise UserError(
            f"folder dataset: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {directory}"
        )
    class_of: dict[str, str] = {}
    if request.folder_labels:
        loose = [f.name for f in files if f.parent == directory]
        if loose:
            raise UserError(
                f"folder_labels needs every image inside a first-level sub-folder of {directory}, "
                f"found {len(loose)} directly in it (e.g. {loose[0]})"
            )
        class_of = {f.relative_to(directory).as_posix(): f.relative_to(directory).parts[0] for f in files}
    decoded = load_image_files(
        "folder", directory, files, image_size=request.image_size, channels=None, cache_dir=request.cache_dir
    )
    if not request.folder_labels:
        return ArrayDataset("folder", decoded.images, None, None, None, decoded.ids)
    names = sorted({class_of[i] for i in decoded.ids})
    index = {n: k for k, n in enumerate(names)}
    labels = np.array([index[class_of[i]] for i in decoded.ids], dtype=np.int64)
    return ArrayDataset("folder", decoded.images, labels, len(names), names, decoded.ids)


# ---------------------------------------------------------------- registry


def _build_registry() -> dict[str, tuple[DatasetInfo, Callable[[_Request], ArrayDataset]]]:
    """Every dataset's info and loader, keyed by name."""
    cifar10_find, cifar10_load = _cifar_loader(
        "cifar10",
        ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
        _CIFAR10_FILES,
        "batches.meta",
        _read_cifar10,
        10,
    )
    cifar100_find, cifar100_load = _cifar_loader(
        "cifar100-20",
        ("cifar-100-python", "cifar100/cifar-100-python"),
        _CIFAR100_FILES,
        "meta",
        _read_cifar100,
        20,
    )
    labelled = ("train", "test", "all")
    cifar_get = (
        "Download {archive} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into <root> "
        "(giving <root>/{folder})."
    )
    imagenet_get = (
        "Needs ILSVRC-2012 (free account at https://image-net.org): put the train images of its {n} WNIDs "
        "in <root>/imagenet/train/<wnid>/ (optionally val/<wnid>/); WNIDs: deepclust.data.datasets.{const}."
    )
    entries: list[tuple[DatasetInfo, Callable[[_Request], ArrayDataset]]] = [
        (
            DatasetInfo(
                name="fashion-mnist",
                description="Zalando Fashion-MNIST: 70,000 grayscale clothing images",
                num_classes=10,
                resolution=28,
                channels=1,
                splits=labelled,
                how_to_get="Install the Debian package dataset-fashion-mnist, or put the four IDX files of "
                "github.com/zalandoresearch/fashion-mnist in <root>/fashion-mnist; when online they are "
                "downloaded automatically.",
                _finder=lambda root: _first(_fashion_candidates(root, None), _has_fashion),
            ),
            _load_fashion,
        ),
        (
            DatasetInfo(
                name="digits",
                description="scikit-learn handwritten digits: 1,797 grayscale 8×8 images",
                num_classes=10,
                resolution=8,
                channels=1,
                splits=("all",),
                how_to_get="Ships with scikit-learn; nothing to download.",
                _finder=lambda _root: _digits_file() if _digits_file().is_file() else None,
            ),
            _load_digits,
        ),
        (
            DatasetInfo(
                name="cifar10",
                description="CIFAR-10: 60,000 colour images of 10 classes",
                num_classes=10,
                resolution=32,
                channels=3,
                splits=labelled,
                how_to_get=cifar_get.format(archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py"),
                _finder=cifar10_find,
            ),
            cifar10_load,
        ),
        (
            DatasetInfo(
                name="cifar100-20",
                description="CIFAR-100 labelled with its 20 superclasses: 60,000 colour images",
                num_classes=20,
                resolution=32,
                channels=3,
                splits=labelled,
                how_to_get=cifar_get.format(archive="cifar-100-python.tar.gz", folder="cifar-100-python"),
                _finder=cifar100_find,
            ),
            cifar100_load,
        ),
        (
            DatasetInfo(
                name="stl10",
                description="STL-10: 13,000 labelled and 100,000 unlabelled 96×96 colour images",
                num_classes=10,
                resolution=96,
                channels=3,
                splits=(*labelled, "unlabeled"),
                how_to_get="Download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and "
                "extract it into <root> (giving <root>/stl10_binary).",
                _finder=_find_stl10,
            ),
            _load_stl10,
        ),
        (
            DatasetInfo(
                name="imagenet10",
                description="ImageNet-10: 10 ILSVRC-2012 classes (13,000 train images)",
                num_classes=10,
                resolution=IMAGENET_DEFAULT_SIZE,
                channels=3,
                splits=labelled,
                how_to_get=imagenet_get.format(n=10, const="IMAGENET10_CLASSES"),
                _finder=_imagenet_finder("imagenet10", sorted(IMAGENET10_CLASSES)),
            ),
            _imagenet_loader("imagenet10", IMAGENET10_CLASSES),
        ),
        (
            DatasetInfo(
                name="imagenet-dogs",
                description="ImageNet-Dogs: 15 dog breeds of ILSVRC-2012",
                num_classes=15,
                resolution=IMAGENET_DEFAULT_SIZE,
                channels=3,
                splits=labelled,
                how_to_get=imagenet_get.format(n=15, const="IMAGENET_DOGS_CLASSES"),
                _finder=_imagenet_finder("imagenet-dogs", sorted(IMAGENET_DOGS_CLASSES)),
            ),
            _imagenet_loader("imagenet-dogs", IMAGENET_DOGS_CLASSES),
        ),
        (
            DatasetInfo(
                name="tiny-imagenet",
                description="Tiny ImageNet: 200 classes, 110,000 labelled 64×64 colour images",
                num_classes=200,
                resolution=64,
                channels=3,
                splits=labelled,
                how_to_get="Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into "
                "<root> (giving <root>/tiny-imagenet-200).",
                _finder=_find_tiny,
            ),
            _load_tiny,
        ),
        (
            DatasetInfo(
                name="folder",
                description="any folder of images, searched recursively",
                num_classes=None,
                resolution=None,
                channels=None,
                splits=("all",),
                how_to_get="Pass the image folder itself as the data root (--data-root DIR); with "
                "folder_labels the first-level sub-folder names are the classes.",
                _finder=_find_folder,
            ),
            _load_folder,
        ),
    ]
    return {info.name: (info, loader) for info, loader in entries}


_REGISTRY = _build_registry()


def _canonical(name: str) -> str:
    """The registered name for ``name`` (case, ``_`` versus ``-`` and aliases forgiven)."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(_REGISTRY)}")
    return key


def list_datasets() -> list[DatasetInfo]:
    """Every registered dataset, in a fixed order."""
    return [info for info, _ in _REGISTRY.values()]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (a few aliases such as ``cifar100`` are accepted)."""
    return _REGISTRY[_canonical(name)][0]


def load_dataset(
    name: str,
    split: str = "all",
    root: str | Path | None = None,
    *,
    image_size: int | None = None,
    folder_labels: bool = False,
    cache_dir: str | Path | None = None,
) -> ArrayDataset:
    """Load a dataset split as an :class:`ArrayDataset`.

    ``root`` is where to look first (default ``$DEEPCLUST_DATA``; for ``folder`` it is the image folder).
    ``image_size`` sets the square side of folder-based datasets (ImageNet subsets default to 96, Tiny
    ImageNet to 64, ``folder`` to the median shorter side, at most 128); fixed-resolution sets accept only their
    own.
    ``folder_labels`` takes labels from first-level sub-folder names (``folder`` only). ``cache_dir`` holds
    decoded image folders (default ``$DEEPCLUST_CACHE`` or ``~/.cache/deepclust``).

    Raises :class:`UserError` for an unknown name, split or option and :class:`DatasetNotFoundError` when the
    files are missing.
    """
    info, loader = _REGISTRY[_canonical(name)]
    if split not in info.splits:
        raise UserError(
            f"dataset {info.name!r} has no split {split!r}; valid splits: {', '.join(info.splits)}"
        )
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise UserError(
            f"image_size must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, got {image_size!r}"
        )
    if folder_labels and info.name != "folder":
        raise UserError(f"folder_labels applies only to the 'folder' dataset, not {info.name!r}")
    request = _Request(
        info=info,
        split=split,
        root=None if root is None else Path(root).expanduser(),
        image_size=image_size,
        folder_labels=folder_labels,
        cache_dir=None if cache_dir is None else Path(cache_dir).expanduser(),
    )
    try:
        return loader(request)
    except PermissionError as err:  # a file found but not readable by this user (image files are skipped)
        raise UserError(f"{info.name}: cannot read {err.filename}: permission denied") from None


def resolve_num_clusters(dataset: ArrayDataset, requested: int | None = None) -> int:
    """K: ``requested`` (``data.num_clusters``), else the dataset's number of classes; checked against the
    number of samples."""
    k = requested if requested is not None else dataset.num_classes
    if k is None:
        raise UserError(
            f"dataset {dataset.name!r} has no known number of classes: pass --clusters K (data.num_clusters=K)"
        )
    if k < 2:
        raise UserError(f"the number of clusters K must be at least 2, got {k}")
    if k > len(dataset):
        raise UserError(f"K={k} clusters is more than the {len(dataset)} samples of {dataset.name!r}")
    return int(k)
