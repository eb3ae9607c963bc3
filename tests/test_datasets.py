"""Tests of the dataset layer: each loader reads tiny files written in the real on-disk format."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from deepclust.data import (
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_TO_COARSE,
    ArrayDataset,
    DatasetNotFoundError,
    dataset_info,
    default_data_root,
    image_folder,
    list_datasets,
    load_dataset,
)
from deepclust.data import datasets as datasets_module
from deepclust.data.datasets import IMAGENET10_CLASSES, IMAGENET_DOGS_CLASSES
from deepclust.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $DEEPCLUST_DATA from the developer's shell, and every cache write goes to tmp_path."""
    monkeypatch.delenv("DEEPCLUST_DATA", raising=False)
    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An IDX file: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


class _Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 byte string, as cPickle did when the CIFAR files were made."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_string(self, obj: str | bytes) -> None:
        """SHORT_BINSTRING / BINSTRING: what Python 2 wrote for every ``str``."""
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def write_py2_pickle(path: Path, content: dict) -> None:
    """Pickle ``content`` as the Python 2 cPickle of the CIFAR distribution would."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(content)
    # The real files were written by numpy 1.x, whose arrays pickle as numpy.core.multiarray._reconstruct.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def random_cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random CIFAR rows of 3,072 bytes."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(directory: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Five train batches of 2 images and a test batch of 3, plus batches.meta."""
    batches = {}
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        data, labels = random_cifar_rows(rng, n), [int(x) for x in rng.integers(0, 10, n)]
        write_py2_pickle(
            directory / name,
            {
                "batch_label": f"{name} of 6",
                "labels": labels,
                "data": data,
                "filenames": [f"{i}.png" for i in range(n)],
            },
        )
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_py2_pickle(
        directory / "batches.meta", {"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072}
    )
    return batches


def write_stl10(directory: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    """STL-10 binaries: each image channel by channel, each channel column-major; labels 1..10."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, array in images.items():
        (directory / f"{split}_X.bin").write_bytes(
            np.ascontiguousarray(array.transpose(0, 1, 3, 2)).tobytes()
        )
    for split, values in labels.items():
        (directory / f"{split}_y.bin").write_bytes((values + 1).astype(np.uint8).tobytes())
    (directory / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"])
        + "\n"
    )


def solid(
    path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10), fmt: str | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


# ---------------------------------------------------------------- registry and errors


def test_registry_names_and_infos() -> None:
    names = [info.name for info in list_datasets()]
    assert names == [
        "fashion-mnist",
        "digits",
        "cifar10",
        "cifar100-20",
        "stl10",
        "imagenet10",
        "imagenet-dogs",
        "tiny-imagenet",
        "folder",
    ]
    assert dataset_info("stl10").splits == ("train", "test", "all", "unlabeled")
    assert dataset_info("CIFAR100").name == "cifar100-20"
    assert dataset_info("fashion_mnist").num_classes == 10
    assert dataset_info("imagenet-dogs").num_classes == 15 == len(IMAGENET_DOGS_CLASSES)
    assert dataset_info("folder").resolution is None
    assert all(info.how_to_get for info in list_datasets())


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'mnist-typo'.*cifar10.*tiny-imagenet"):
        load_dataset("mnist-typo")
    with pytest.raises(UserError, match="valid names"):
        dataset_info("nope")


def test_unknown_split_lists_valid_splits() -> None:
    with pytest.raises(UserError, match=r"no split 'train'; valid splits: all"):
        load_dataset("digits", "train")
    with pytest.raises(UserError, match=r"valid splits: train, test, all"):
        load_dataset("cifar10", "val")


def test_option_misuse_is_user_error() -> None:
    with pytest.raises(UserError, match="fixed 8×8 resolution"):
        load_dataset("digits", image_size=32)
    with pytest.raises(UserError, match="folder_labels applies only"):
        load_dataset("digits", folder_labels=True)
    with pytest.raises(UserError, match="whole number of pixels from 1 to 2048"):
        load_dataset("digits", image_size=0)
    # a typo such as 100000 is refused before the image cache allocates for it
    with pytest.raises(UserError, match="whole number of pixels from 1 to 2048, got 100000"):
        load_dataset("folder", image_size=100000)


def test_missing_files_message_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar10", root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message
    with pytest.raises(DatasetNotFoundError, match=r"no data root given.*DEEPCLUST_DATA"):
        load_dataset("stl10")


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize(("gz", "subdir"), [(True, "fashion-mnist"), (False, "FashionMNIST/raw")])
def test_fashion_mnist_idx(tmp_path: Path, gz: bool, subdir: str) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    train_y, test_y = np.array([9, 0, 4]), np.array([1, 7])
    folder = tmp_path / subdir
    write_idx(folder / "train-images-idx3-ubyte", train, gz)
    write_idx(folder / "train-labels-idx1-ubyte", train_y, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", test, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", test_y, gz)

    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.image_shape == (1, 28, 28) and len(ds) == 5
    np.testing.assert_array_equal(ds.images[:, 0], np.concatenate([train, test]))
    np.testing.assert_array_equal(ds.labels, [9, 0, 4, 1, 7])
    assert ds.labels.dtype == np.int64 and ds.class_names[9] == "Ankle boot"
    assert len(load_dataset("fashion-mnist", "train", tmp_path)) == 3
    test_ds = load_dataset("fashion-mnist", "test", tmp_path)
    np.testing.assert_array_equal(test_ds.labels, [1, 7])
    assert dataset_info("fashion-mnist").locate(tmp_path) == folder


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (bytes([0, 0, 0x0D, 3]) + struct.pack(">3i", 1, 28, 28) + bytes(784), "magic number 00000d03"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 2, 28, 28) + bytes(784), "truncated or corrupt"),
        (bytes([0, 0, 8]), "too short"),
        (b"\x1f\x8b" + b"not really gzip", "corrupt gzip"),
    ],
)
def test_corrupt_idx_is_user_error(tmp_path: Path, payload: bytes, match: str) -> None:
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(1, np.uint8), gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8), gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1, np.uint8), gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(payload)
    with pytest.raises(UserError, match=match):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_fashion_mnist_missing_tries_download_then_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SYSTEM_DIRS", ())
    attempts: list[Path] = []

    def offline(target: Path) -> Path:
        """A download that fails as it would without network."""
        attempts.append(target)
        raise OSError("network is unreachable")

    monkeypatch.setattr(datasets_module, "_download_fashion_mnist", offline)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist", root=tmp_path / "data", cache_dir=tmp_path / "c")
    message = str(caught.value)
    assert "network is unreachable" in message and "dataset-fashion-mnist" in message
    assert str(tmp_path / "data" / "fashion-mnist") in message
    assert attempts == [tmp_path / "c"]


def test_fashion_mnist_download_fallback_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_SYSTEM_DIRS", ())

    def fake_download(target: Path) -> Path:
        """Write the files torchvision would have downloaded."""
        raw = target / "FashionMNIST" / "raw"
        for prefix, n in (("train", 2), ("t10k", 1)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), 7), gz=False)
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n), gz=False)
        return raw

    monkeypatch.setattr(datasets_module, "_download_fashion_mnist", fake_download)
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path / "dl")
    assert len(ds) == 3 and int(ds.images.max()) == 7
    assert dataset_info("fashion-mnist").locate(None) is None  # locate looks in the default cache only


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_from_debian_package() -> None:
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 70_000 and ds.image_shape == (1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    np.testing.assert_array_equal(np.bincount(ds.labels), [7000] * 10)
    assert len(load_dataset("fashion-mnist", "train")) == 60_000
    assert len(load_dataset("fashion-mnist", "test")) == 10_000
    assert load_dataset("fashion-mnist").images is ds.images  # parsed once per process
    assert not ds.images.flags.writeable  # shared between callers, so read-only
    image, label, index = ds[123]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and index == 123
    assert label == int(ds.labels[123])


# ---------------------------------------------------------------- digits


def test_digits() -> None:
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.image_shape == (1, 8, 8)
    assert ds.images.dtype == np.uint8 and int(ds.images.max()) == 255 and int(ds.images.min()) == 0
    assert set(np.unique(ds.labels)) == set(range(10)) and ds.num_classes == 10
    assert dataset_info("digits").locate(None) is not None


# ---------------------------------------------------------------- CIFAR


def test_py2_pickle_helper_matches_real_files(tmp_path: Path) -> None:
    write_py2_pickle(tmp_path / "b", {"labels": [1], "data": np.zeros((1, 3072), np.uint8)})
    raw = (tmp_path / "b").read_bytes()
    assert b"numpy.core.multiarray" in raw and pickle.SHORT_BINSTRING + b"\x06labels" in raw
    assert set(pickle.loads(raw, encoding="bytes")) == {b"labels", b"data"}


def test_cifar10_pickles(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(1))
    ds = load_dataset("cifar10", root=tmp_path)
    assert len(ds) == 13 and ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    order = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    np.testing.assert_array_equal(
        ds.images, np.concatenate([batches[b][0] for b in order]).reshape(-1, 3, 32, 32)
    )
    np.testing.assert_array_equal(ds.labels, [label for b in order for label in batches[b][1]])
    assert ds.class_names[1] == "automobile"
    test = load_dataset("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(test.images[2, 1].ravel(), batches["test_batch"][0][2, 1024:2048])
    assert len(load_dataset("cifar10", "train", tmp_path)) == 10


def test_cifar10_found_through_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(2))
    monkeypatch.setenv("DEEPCLUST_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    assert dataset_info("cifar10").locate(None) == tmp_path / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", "test")) == 3
    # an explicit root replaces the variable, as the README and `deepclust datasets --help` say
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert dataset_info("cifar10").locate(elsewhere) is None


@pytest.mark.parametrize("with_coarse", [True, False])
def test_cifar100_superclasses(tmp_path: Path, with_coarse: bool) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    fine = {"train": [0, 19, 58, 99], "test": [41, 3]}
    for split, labels in fine.items():
        content = {"data": random_cifar_rows(rng, len(labels)), "fine_labels": labels}
        if with_coarse:
            content["coarse_labels"] = [CIFAR100_FINE_TO_COARSE[f] for f in labels]
        write_py2_pickle(folder / split, content)
    write_py2_pickle(
        folder / "meta", {"fine_label_names": ["x"] * 100, "coarse_label_names": list(CIFAR100_COARSE_NAMES)}
    )
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.name == "cifar100-20" and ds.num_classes == 20 and len(ds.class_names) == 20
    np.testing.assert_array_equal(ds.labels, [4, 11, 18, 13, 19, 8])


def test_cifar100_fine_to_coarse_table() -> None:
    table = np.asarray(CIFAR100_FINE_TO_COARSE)
    assert table.shape == (100,)
    np.testing.assert_array_equal(np.bincount(table), [5] * 20)
    names = CIFAR100_COARSE_NAMES
    spot_checks = {
        0: "fruit_and_vegetables",  # apple
        1: "fish",  # aquarium_fish
        3: "large_carnivores",  # bear
        19: "large_omnivores_and_herbivores",  # cattle
        30: "aquatic_mammals",  # dolphin
        41: "vehicles_2",  # lawn_mower
        58: "vehicles_1",  # pickup_truck
        62: "flowers",  # poppy
        86: "household_electrical_devices",  # telephone
        99: "non-insect_invertebrates",  # worm
    }
    for fine, coarse_name in spot_checks.items():
        assert names[table[fine]] == coarse_name


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        """An object whose unpickling calls a function."""

        def __reduce__(self) -> tuple:
            """Ask the unpickler to call os.getcwd."""
            return (os.getcwd, ())

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, np.random.default_rng(4))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match=r"unexpected object posix\.getcwd|unexpected object os\.getcwd"):
        load_dataset("cifar10", "test", tmp_path)


def test_an_unreadable_file_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the user may not read (simulated: the tests may run as root, who reads everything)."""
    write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(1))
    real_open = Path.open

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "test_batch":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UserError, match=r"cifar10: cannot read .*test_batch: permission denied"):
        load_dataset("cifar10", "test", tmp_path)


def test_damaged_cifar_files_are_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, np.random.default_rng(4))
    # a BINBYTES opcode whose 8-byte length is beyond any platform's limit
    (folder / "data_batch_3").write_bytes(b"\x80\x04\x8e" + b"\xff" * 8)
    with pytest.raises(UserError, match=r"data_batch_3: not a readable CIFAR pickle"):
        load_dataset("cifar10", "train", tmp_path)
    write_cifar10(folder, np.random.default_rng(4))
    write_py2_pickle(folder / "batches.meta", {"label_names": ["cat", "dog"]})
    with pytest.raises(UserError, match=r"batches\.meta: expected 10 class names, found 2"):
        load_dataset("cifar10", "test", tmp_path)


# ---------------------------------------------------------------- STL-10


def test_stl10_column_major_binaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = {s: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for s, n in (("train", 2), ("test", 1))}
    images["unlabeled"] = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    labels = {"train": np.array([0, 9]), "test": np.array([4])}
    write_stl10(tmp_path / "stl10_binary", images, labels)

    # Column-major on disk: the second byte of the file is row 1, column 0 of the first channel.
    raw = np.fromfile(tmp_path / "stl10_binary" / "train_X.bin", dtype=np.uint8)
    train = load_dataset("stl10", "train", tmp_path)
    assert train.images[0, 0, 1, 0] == raw[1] and train.images[0, 0, 0, 1] == raw[96]
    np.testing.assert_array_equal(train.images, images["train"])
    np.testing.assert_array_equal(train.labels, [0, 9])

    everything = load_dataset("stl10", "all", tmp_path)
    np.testing.assert_array_equal(everything.images, np.concatenate([images["train"], images["test"]]))
    np.testing.assert_array_equal(everything.labels, [0, 9, 4])
    assert everything.class_names[7] == "monkey"

    unlabeled = load_dataset("stl10", "unlabeled", tmp_path)
    assert (
        isinstance(unlabeled.images, np.memmap) and unlabeled.labels is None and unlabeled.num_classes == 10
    )
    image, label, index = unlabeled[2]
    assert label == -1 and index == 2 and image.is_contiguous()
    assert torch.equal(image, torch.from_numpy(images["unlabeled"][2]))


def test_stl10_truncated_and_missing_unlabeled(tmp_path: Path) -> None:
    images = {"train": np.zeros((1, 3, 96, 96), np.uint8), "test": np.zeros((1, 3, 96, 96), np.uint8)}
    write_stl10(tmp_path, images, {"train": np.array([0]), "test": np.array([1])})
    with pytest.raises(DatasetNotFoundError, match=r"unlabeled_X\.bin"):
        load_dataset("stl10", "unlabeled", tmp_path)
    with (tmp_path / "test_X.bin").open("ab") as handle:
        handle.write(b"\x00" * 10)
    with pytest.raises(UserError, match="not a whole number"):
        load_dataset("stl10", "test", tmp_path)
    (tmp_path / "class_names.txt").write_text("airplane\nbird\n")
    with pytest.raises(UserError, match=r"class_names\.txt: expected 10 class names, found 2"):
        load_dataset("stl10", "train", tmp_path)


# ---------------------------------------------------------------- ImageNet subsets


def palette_color(label: int) -> tuple[int, int, int]:
    """A distinct colour per class."""
    return (20 * label + 10, 255 - 20 * label, 120)


def make_imagenet(base: Path, wnids: list[str], per_class: int = 2, with_val: bool = True) -> None:
    """An ImageNet-style tree: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``."""
    for label, wnid in enumerate(sorted(wnids)):
        for i in range(per_class):
            solid(base / "train" / wnid / f"{wnid}_{i}.JPEG", palette_color(label))
        if with_val:
            solid(base / "val" / wnid / f"ILSVRC2012_val_{label:08d}.JPEG", palette_color(label), (9, 14))


def test_imagenet10_folders(tmp_path: Path) -> None:
    wnids = sorted(IMAGENET10_CLASSES)
    make_imagenet(tmp_path / "imagenet", wnids)
    # A truncated JPEG: skipped with a warning, the other rows keep their labels.
    good = (tmp_path / "imagenet" / "train" / wnids[0] / f"{wnids[0]}_0.JPEG").read_bytes()
    (tmp_path / "imagenet" / "train" / wnids[0] / "broken.JPEG").write_bytes(good[: len(good) // 2])

    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*broken\.JPEG"):
        ds = load_dataset("imagenet10", root=tmp_path, image_size=8, cache_dir=tmp_path / "cache")
    assert len(ds) == 30 and ds.image_shape == (3, 8, 8) and ds.num_classes == 10
    assert ds.class_names[0] == "king penguin" and ds.class_names[9] == "orange"
    assert all(i.startswith(("train/", "val/")) for i in ds.ids) and "broken" not in " ".join(ds.ids)
    for row, image_id in enumerate(ds.ids):
        label = wnids.index(image_id.split("/")[1])
        assert ds.labels[row] == label
        mean = ds.images[row].reshape(3, -1).mean(axis=1)
        np.testing.assert_allclose(mean, palette_color(label), atol=6)
    with pytest.warns(UserWarning, match="broken"):  # the train split is a cache entry of its own
        assert len(load_dataset("imagenet10", "train", tmp_path, image_size=8)) == 20
    assert len(load_dataset("imagenet10", "test", tmp_path, image_size=8)) == 10
    assert dataset_info("imagenet10").locate(tmp_path) == tmp_path / "imagenet"


def test_imagenet_missing_wnids_are_named(tmp_path: Path) -> None:
    wnids = sorted(IMAGENET10_CLASSES)
    make_imagenet(tmp_path / "imagenet", wnids[2:], per_class=1, with_val=False)
    with pytest.raises(DatasetNotFoundError, match=f"{wnids[0]} {wnids[1]} are missing"):
        load_dataset("imagenet10", root=tmp_path)
    assert dataset_info("imagenet10").locate(tmp_path) is None


def test_imagenet_dogs_flat_layout(tmp_path: Path) -> None:
    wnids = sorted(IMAGENET_DOGS_CLASSES)
    for label, wnid in enumerate(wnids):
        solid(tmp_path / wnid / "a.jpeg", palette_color(label % 10))
    solid(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", (0, 0, 0))  # the official, unsorted val/
    ds = load_dataset("imagenet-dogs", root=tmp_path, image_size=6)
    assert len(ds) == 15 and ds.image_shape == (3, 6, 6)
    np.testing.assert_array_equal(ds.labels, np.arange(15))
    with pytest.raises(DatasetNotFoundError, match="val/<wnid>/"):
        load_dataset("imagenet-dogs", "test", tmp_path, image_size=6)


# ---------------------------------------------------------------- Tiny ImageNet


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n03444034", "n01443537", "n02099601"]  # wnids.txt is not sorted; labels follow sorted order
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02099601\tgolden retriever\n")
    for wnid in wnids:
        for i in range(2):
            solid(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (200, 30, 30), (64, 64))
    annotations = []
    for i, wnid in enumerate(["n02099601", "n03444034", "n02099601"]):
        solid(base / "val" / "images" / f"val_{i}.JPEG", (30, 30, 200), (64, 64))
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t10\t50\t60")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")

    ds = load_dataset("tiny-imagenet", root=tmp_path)
    assert len(ds) == 9 and ds.image_shape == (3, 64, 64) and ds.num_classes == 3
    assert ds.class_names == ["goldfish", "golden retriever", "n03444034"]
    test = load_dataset("tiny-imagenet", "test", tmp_path)
    assert test.ids == ["val/images/val_0.JPEG", "val/images/val_1.JPEG", "val/images/val_2.JPEG"]
    np.testing.assert_array_equal(test.labels, [1, 2, 1])
    train = load_dataset("tiny-imagenet", "train", tmp_path)
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1, 2, 2])

    (base / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 validation image"):
        load_dataset("tiny-imagenet", "test", tmp_path)


# ---------------------------------------------------------------- any folder


def make_mixed_folder(root: Path) -> None:
    """Mixed sizes and modes; shorter sides 10, 8, 12, 9, 11, 10, 6 so the median is 10."""
    solid(root / "a" / "red.png", (255, 0, 0), (10, 10))
    (root / "b").mkdir()
    Image.new("L", (8, 8), 77).save(root / "a" / "gray.PNG")
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(root / "b" / "clear.png")
    palette = Image.new("P", (9, 9), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(root / "b" / "blue.gif")
    Image.new("CMYK", (11, 11), (255, 0, 0, 0)).save(root / "b" / "cyan.tif")
    Image.fromarray(np.full((10, 10), 128 * 257, dtype=np.uint16)).save(root / "b" / "sixteen.png")
    solid(root / "b" / "nested" / "wide.jpg", (0, 200, 0), (16, 6))
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "b" / "notes.txt").write_text("not an image")


def test_folder_mixed_modes_and_sizes(tmp_path: Path) -> None:
    make_mixed_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*b/corrupt\.png"):
        ds = load_dataset("folder", root=tmp_path / "imgs")
    assert ds.ids == [
        "a/gray.PNG",
        "a/red.png",
        "b/blue.gif",
        "b/clear.png",
        "b/cyan.tif",
        "b/nested/wide.jpg",
        "b/sixteen.png",
    ]
    assert ds.image_shape == (3, 10, 10) and ds.labels is None and ds.num_classes is None
    center = {i: tuple(int(v) for v in ds.images[k, :, 5, 5]) for k, i in enumerate(ds.ids)}
    assert center["a/gray.PNG"] == (77, 77, 77)
    assert center["a/red.png"] == (255, 0, 0)
    assert center["b/blue.gif"] == (0, 0, 255)
    assert center["b/clear.png"] == (255, 255, 255)  # transparent pixels composited on white
    assert center["b/cyan.tif"] == (0, 255, 255)
    assert center["b/sixteen.png"] == (128, 128, 128)  # 16-bit scaled, not clipped
    assert abs(center["b/nested/wide.jpg"][1] - 200) < 8


def test_folder_labels_and_explicit_size(tmp_path: Path) -> None:
    make_mixed_folder(tmp_path)
    with pytest.warns(UserWarning, match="corrupt"):
        ds = load_dataset("folder", root=tmp_path, image_size=4, folder_labels=True)
    assert ds.image_shape == (3, 4, 4) and ds.class_names == ["a", "b"] and ds.num_classes == 2
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1, 1, 1])
    solid(tmp_path / "loose.png", (1, 2, 3))
    with pytest.raises(UserError, match="first-level sub-folder"):
        load_dataset("folder", root=tmp_path, folder_labels=True)


def test_folder_of_grayscale_images_keeps_one_channel(tmp_path: Path) -> None:
    Image.new("L", (6, 6), 10).save(tmp_path / "x.png")
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(tmp_path / "y.png")
    ds = load_dataset("folder", root=tmp_path)
    assert ds.image_shape == (1, 6, 6)
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [10, 255])


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no image files"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(UserError, match="is not a directory"):
        load_dataset("folder", root=tmp_path / "absent")
    with pytest.raises(UserError, match="needs the image folder"):
        load_dataset("folder")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 1 image file"):
        load_dataset("folder", root=tmp_path)


# ---------------------------------------------------------------- the decoded-image cache


def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        solid(tmp_path / "imgs" / f"{i}.png", (i * 40, 0, 0), (7, 7))
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path: object, *args: object, **kwargs: object) -> Image.Image:
        """Image.open, counting calls."""
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    # Exercise the progress bar and chunking paths with a handful of files.
    monkeypatch.setattr(image_folder, "PROGRESS_THRESHOLD", 2)
    monkeypatch.setattr(image_folder, "_CHUNK", 2)
    cache = tmp_path / "cache"

    first = load_dataset("folder", root=tmp_path / "imgs", cache_dir=cache)
    assert len(opened) >= 5
    opened.clear()
    second = load_dataset("folder", root=tmp_path / "imgs", cache_dir=cache)
    assert opened == []
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    assert not list(cache.rglob("*.tmp"))  # temporary files were renamed into place

    load_dataset("folder", root=tmp_path / "imgs", image_size=5, cache_dir=cache)
    assert len(opened) >= 5  # another size is another cache entry
    opened.clear()
    solid(tmp_path / "imgs" / "3.png", (0, 0, 250), (7, 7))
    os.utime(tmp_path / "imgs" / "3.png", ns=(1, 1))
    third = load_dataset("folder", root=tmp_path / "imgs", cache_dir=cache)
    assert opened  # an edited file invalidates the entry
    assert tuple(third.images[3, :, 0, 0]) == (0, 0, 250)
    # the new entry replaced the folder's old one at that size; the 5-px entry stays
    assert sorted(entry.name.rsplit("-", 1)[0] for entry in (cache / "images").iterdir()) == [
        "folder-5",
        "folder-auto",
    ]


def test_folder_follows_linked_folders_and_reports_dangling_links(tmp_path: Path) -> None:
    solid(tmp_path / "photos" / "c" / "x.png", (10, 0, 0))
    solid(tmp_path / "photos" / "c" / "y.png", (20, 0, 0))
    root = tmp_path / "root"
    solid(root / "real.png", (30, 0, 0))
    (root / "linked").symlink_to(tmp_path / "photos" / "c", target_is_directory=True)
    (root / "linked" / "loop").symlink_to(tmp_path / "photos", target_is_directory=True)  # a cycle ends
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*dangling\.png"):
        ds = load_dataset("folder", root=root, cache_dir=tmp_path / "cache")
    assert ds.ids == ["linked/x.png", "linked/y.png", "real.png"]  # photos/c once, not again through the loop


def test_folder_photos_are_upright_and_decoded_small(tmp_path: Path) -> None:
    """A photo tagged "rotate 90°" (EXIF orientation 6) is turned upright before the crop, and the automatic
    size stops at 128 px."""
    sideways = Image.new("RGB", (400, 200), (0, 0, 255))
    sideways.paste((255, 0, 0), (0, 0, 200, 200))  # left half red: upright, the top half is red
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    solid(tmp_path / "other.png", (0, 255, 0), (300, 300))
    ds = load_dataset("folder", root=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.image_shape == (3, 128, 128)
    photo = ds.images[ds.ids.index("photo.jpg")]
    top, bottom = photo[:, 10, 64], photo[:, 117, 64]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


# ---------------------------------------------------------------- ArrayDataset


def test_array_dataset_item_subset_and_validation() -> None:
    images = np.arange(4 * 3 * 2 * 2, dtype=np.uint8).reshape(4, 3, 2, 2)
    ds = ArrayDataset(
        "toy", images, np.array([0, 1, 0, 1], dtype=np.int32), 2, ["x", "y"], ["a", "b", "c", "d"]
    )
    assert ds.labels.dtype == np.int64 and ds.image_shape == (3, 2, 2) and len(ds) == 4
    image, label, index = ds[-1]
    assert torch.equal(image, torch.from_numpy(images[3])) and label == 1 and index == 3
    with pytest.raises(IndexError):
        ds[4]
    sub = ds.subset(np.array([2, 0]))
    assert sub.ids == ["c", "a"] and sub.labels.tolist() == [0, 0] and sub.num_classes == 2
    np.testing.assert_array_equal(sub.images, images[[2, 0]])
    masked = ds.subset(np.array([False, True, True, False]))
    assert masked.ids == ["b", "c"]
    unlabeled = ArrayDataset("toy", images)
    assert unlabeled[0][1] == -1
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset("bad", images.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset("bad", images, np.zeros(3, dtype=np.int64))
