"""Readers for the on-disk formats of the array datasets: IDX (MNIST family), CIFAR pickles, STL-10 binaries.

Every reader validates what it reads and raises :class:`~deepclust.errors.UserError` naming the file when the
file is truncated or is not in the expected format, so a bad download gives a clear message instead of a
reshape error deep inside numpy.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.errors import UserError

# The IDX type code for unsigned bytes, the only element type the MNIST-family files use.
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

CIFAR100_COARSE_NAMES: tuple[str, ...] = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)

# Superclass of each CIFAR-100 fine label (fine labels in the alphabetical order of the `meta` pickle:
# 0 apple, 1 aquarium_fish, ..., 99 worm). Each of the 20 superclasses has exactly five fine classes.
CIFAR100_FINE_TO_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip

STL10_CLASSES: tuple[str, ...] = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)
STL10_SIZE = 96


def read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when they start with the gzip magic number (whatever the suffix)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: corrupt gzip file ({err}); delete it and download it again") from err


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or not) with ``ndim`` dimensions into a uint8 array.

    The header is two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
    big-endian int32 per dimension; the data follow in C order.
    """
    data = read_maybe_gzip(path)
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise UserError(f"{path}: only {len(data)} bytes, too short for an IDX header; download it again")
    if data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or data[3] != ndim:
        raise UserError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(magic number {data[:4].hex()}, expected 000008{ndim:02x})"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header_len != expected:
        raise UserError(
            f"{path}: header announces shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header_len} bytes of data; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def _numpy_multiarray() -> Any:
    """numpy's ``multiarray`` module under its numpy-2 name, falling back to the numpy-1 one."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, so a tampered "dataset" file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the few numpy callables an array needs; refuse anything else."""
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        # Python 3 writes bytes with protocol < 3 as a call to _codecs.encode.
        if module == "_codecs" and name == "encode":
            return importlib.import_module("_codecs").encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle")


def _as_text(value: Any) -> Any:
    """Decode the byte strings that Python 2 pickles hold (keys, class names) into ``str``."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR python-version pickle (a Python 2 pickle of a dict with byte-string keys).

    Keys and byte-string values in lists (class names) come back as ``str``; arrays stay numpy arrays.
    """
    try:
        with path.open("rb") as handle:
            content = _CifarUnpickler(handle, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,  # a length field beyond what the platform can hold
        MemoryError,  # a length field too large to allocate
    ) as err:
        raise UserError(f"{path}: not a readable CIFAR pickle ({err}); download the dataset again") from err
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a pickled dict, found {type(content).__name__}")
    return {_as_text(key): _as_text(value) for key, value in content.items()}


def cifar_images(batch: dict[str, Any], path: Path) -> np.ndarray:
    """The ``data`` entry of a CIFAR batch (rows of 3,072 bytes: R plane, G plane, B plane) as N×3×32×32."""
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise UserError(
            f"{path}: 'data' should be an N×3072 uint8 array, found shape {data.shape} dtype {data.dtype}"
        )
    return data.reshape(-1, 3, 32, 32)


def cifar_labels(batch: dict[str, Any], key: str, num_classes: int, path: Path) -> np.ndarray | None:
    """The integer labels stored under ``key`` as int64, checked against ``num_classes``; None when absent."""
    if key not in batch:
        return None
    labels = np.asarray(batch[key], dtype=np.int64)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise UserError(f"{path}: '{key}' should hold integers in 0..{num_classes - 1}")
    return labels


def cifar100_coarse(fine_labels: np.ndarray) -> np.ndarray:
    """Map CIFAR-100 fine labels (0..99) to the 20 superclasses with :data:`CIFAR100_FINE_TO_COARSE`."""
    return np.asarray(CIFAR100_FINE_TO_COARSE, dtype=np.int64)[fine_labels]


def read_stl10_images(path: Path) -> np.ndarray:
    """Memory-map an STL-10 ``*_X.bin`` file as an N×3×96×96 uint8 array without reading it.

    Each image is stored channel by channel and each channel in column-major order, so the file reshapes to
    N×3×W×H and the last two axes are swapped (a view: pixels are read only when accessed).
    """
    image_bytes = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise UserError(
            f"{path}: {size} bytes is not a whole number of 3×96×96 images; the file is truncated, "
            "download it again"
        )
    columns = np.memmap(
        path, dtype=np.uint8, mode="r", shape=(size // image_bytes, 3, STL10_SIZE, STL10_SIZE)
    )
    return columns.swapaxes(2, 3)


def read_stl10_labels(path: Path, count: int) -> np.ndarray:
    """Read an STL-10 ``*_y.bin`` file (one byte per image, 1..10) as int64 labels 0..9."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if labels.size != count:
        raise UserError(f"{path}: {labels.size} labels for {count} images; download the dataset again")
    if labels.size and (labels.min() < 0 or labels.max() >= len(STL10_CLASSES)):
        raise UserError(f"{path}: labels should be 1..10")
    return labels
