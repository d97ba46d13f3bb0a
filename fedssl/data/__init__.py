"""Datasets by name, client partitioners and partition manifests."""

from fedssl.data.datasets import ArrayDataset, DatasetNotFoundError, build_dataset
from fedssl.data.partition import dirichlet, dominant_label, iid, label_split, labeled_unlabeled

__all__ = [
    "ArrayDataset",
    "DatasetNotFoundError",
    "build_dataset",
    "iid",
    "label_split",
    "dominant_label",
    "dirichlet",
    "labeled_unlabeled",
]
