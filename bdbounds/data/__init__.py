"""Datasets for bdbounds."""

from bdbounds.data.image_dataset import ImageDataset
from bdbounds.data.images import IMAGE_DATASETS, get_image_dataset
from bdbounds.data.tfds_images import DatasetNotPreparedError
from bdbounds.data.toy import TOY_DATASETS, ToyDataset, get_toy_dataset

__all__ = [
  "IMAGE_DATASETS",
  "DatasetNotPreparedError",
  "ImageDataset",
  "get_image_dataset",
  "TOY_DATASETS",
  "ToyDataset",
  "get_toy_dataset",
]
