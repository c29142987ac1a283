"""Datasets for bdbounds."""

from bdbounds.data.toy import TOY_DATASETS, ToyDataset, get_toy_dataset

__all__ = ["TOY_DATASETS", "ToyDataset", "get_toy_dataset"]
