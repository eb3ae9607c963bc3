"""Datasets for deep clustering: a registry of loaders that return images as uint8 N×C×H×W arrays.

>>> from deepclust.data import load_dataset
>>> ds = load_dataset("fashion-mnist")            # train+test, 70,000 × 1×28×28
>>> image, label, index = ds[0]
"""

from deepclust.data.batches import TrainBatches, eval_batches
from deepclust.data.datasets import (
    ArrayDataset,
    DatasetInfo,
    dataset_info,
    default_data_root,
    list_datasets,
    load_dataset,
    resolve_num_clusters,
)
from deepclust.data.formats import CIFAR100_COARSE_NAMES, CIFAR100_FINE_TO_COARSE
from deepclust.errors import DatasetNotFoundError

__all__ = [
    "CIFAR100_COARSE_NAMES",
    "CIFAR100_FINE_TO_COARSE",
    "ArrayDataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "TrainBatches",
    "dataset_info",
    "default_data_root",
    "eval_batches",
    "list_datasets",
    "load_dataset",
    "resolve_num_clusters",
]
