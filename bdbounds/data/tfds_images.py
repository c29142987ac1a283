"""Image data sets read from prepared TFDS ``array_record`` files, by index.

TFDS data sets are read through ``tfds.data_source`` (random access over
prepared ``array_record`` files), which needs neither TensorFlow nor the
network at run time; images are decoded one batch at a time, so CelebA never
has to fit in memory. Preparing them once needs a networked machine; a data
set that is not prepared raises ``DatasetNotPreparedError`` with the command.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from bdbounds.data.image_dataset import ImageDataset, Reader

__all__ = ["DatasetNotPreparedError", "tfds_dataset"]

_TFDS_INSTALL = 'pip install -e ".[tfds]"'
# Reading decodes at most this many full-size images at a time.
_READ_CHUNK = 1024


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS data set is missing from ``data_dir`` (data is never downloaded at run time)."""


def _import_tfds():
  """Imports tensorflow_datasets, or says how to install it."""
  try:
    import array_record  # noqa: F401  (tfds.data_source reads array_record files)
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      "the mnist, cifar10 and celeba64 data sets need the optional packages "
      f"tensorflow-datasets and array-record: {_TFDS_INSTALL} (the digits data set needs neither)"
    ) from e
  return tfds


def _open_tfds(
  tfds_name: str, splits: Sequence[str], data_dir: str | os.PathLike | None
) -> dict[str, Any]:
  """Random-access data sources for ``splits`` of a prepared TFDS data set.

  Raises:
    DatasetNotPreparedError: the data set is not in ``data_dir`` as array_record files.
  """
  tfds = _import_tfds()
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  root = os.fspath(builder.data_dir_root)
  build = f"tfds build {tfds_name} --data_dir={root} --file_format=array_record"
  how_to = (
    "Data sets are never downloaded at run time. On a machine with network access run\n"
    # Building (unlike reading) runs TFDS's TensorFlow code; TFDS 4.9 also imports
    # importlib_resources there without declaring it on Python >= 3.9.
    "  pip install tensorflow tensorflow-datasets array-record importlib_resources\n"
    f"  {build}\n"
    f"then copy the directory {os.path.join(root, tfds_name)} to this machine under {root} "
    "(or under another directory that you pass as data_dir)."
  )
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
      f"TFDS data set {tfds_name!r} version {builder.version} is not prepared in {root} "
      f"(no {builder.data_dir}/dataset_info.json). {how_to}"
    )
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  if file_format != "array_record":
    raise DatasetNotPreparedError(
      f"TFDS data set {tfds_name!r} in {builder.data_dir} is stored as {file_format}, but "
      f"random access needs array_record files. Rebuild it: {how_to}"
    )
  return {split: builder.as_data_source(split=split) for split in splits}


def _tfds_reader(
  source: Any, transform: Callable[[np.ndarray], np.ndarray], image_shape: tuple[int, int, int]
) -> Reader:
  """Reads examples by index through the source's random access, in bounded chunks."""
  # Batched reads go through __getitems__ (parallel in array_record) where available.
  getitems = getattr(source, "__getitems__", None)

  def read(indices: np.ndarray) -> np.ndarray:
    keys = [int(i) for i in np.asarray(indices).reshape(-1)]
    images = np.empty((len(keys), *image_shape), np.float32)
    for start in range(0, len(keys), _READ_CHUNK):
      chunk = keys[start : start + _READ_CHUNK]
      examples = getitems(chunk) if getitems is not None else [source[k] for k in chunk]
      for i, example in enumerate(examples, start):
        images[i] = transform(np.asarray(example["image"]))
    return images

  return read


def tfds_dataset(
  name: str,
  tfds_name: str,
  transform: Callable[[np.ndarray], np.ndarray],
  image_shape: tuple[int, int, int],
  flip: bool,
  data_dir: str | os.PathLike | None,
  description: str,
) -> ImageDataset:
  """The ``train`` and ``test`` splits of TFDS data set ``tfds_name`` as an ``ImageDataset``.

  ``transform`` maps one stored uint8 image to float32 ``image_shape`` in [-1, 1].

  Raises:
    ImportError: ``tensorflow-datasets`` or ``array-record`` is not installed.
    DatasetNotPreparedError: the data set is not in ``data_dir`` as array_record files.
  """
  sources = _open_tfds(tfds_name, ("train", "test"), data_dir)
  return ImageDataset(
    name=name,
    image_shape=image_shape,
    num_train=len(sources["train"]),
    num_test=len(sources["test"]),
    flip=flip,
    read_train=_tfds_reader(sources["train"], transform, image_shape),
    read_test=_tfds_reader(sources["test"], transform, image_shape),
    description=description,
  )
