"""Image data sets behind one deterministic, resumable batch function.

Every data set is an ``ImageDataset``: float32 images in ``[-1, 1]`` of shape
``[H, W, C]``, read by index. Training batches are a pure function of
``(seed, step)``, so a run resumed from a checkpointed step sees exactly the
data an uninterrupted run would have seen, with no iterator state to save:

* the global example position of row ``i`` of batch ``b`` at ``step`` is
  ``p = (step * num_batches + b) * batch_size + i``;
* its epoch is ``p // num_train``; within an epoch, examples follow the
  permutation drawn by ``np.random.default_rng([seed, epoch])``;
* the horizontal flip of position ``p`` (where flips are on) is a coin drawn by
  the same generator, so it too depends on ``(seed, p)`` only.

With several processes, each reads only its own contiguous slice of every
global batch; concatenating the slices of processes ``0..P-1`` gives the
single-process batch.

Data sets (``IMAGE_DATASETS``):

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, values 0..16),
  always available offline. A fixed split: the permutation drawn by
  ``default_rng(0)`` puts its first 300 images in the test set and the other
  1497 in the training set. ``image_size`` 8 (as stored), 16 or 32; larger
  sizes are bilinear upsamplings, so a network sees a digit that fills the
  frame (as with MNIST) rather than a small glyph on a wide empty border.
* ``mnist``: TFDS ``mnist``, 28x28x1; ``image_size=32`` pads 2 background
  pixels on each side (the LeNet-5 / DCGAN-32 convention), leaving pixels
  untouched.
* ``cifar10``: TFDS ``cifar10``, 32x32x3.
* ``celeba64``: TFDS ``celeb_a`` (aligned 218x178 images), center crop of
  140x140, then resized to 64x64 (``image_size`` changes the output size).

TFDS data sets are read through ``tfds.data_source`` (random access over
prepared ``array_record`` files), which needs neither TensorFlow nor the
network at run time; images are decoded one batch at a time, so CelebA never
has to fit in memory. Preparing them once needs a networked machine; a data
set that is not prepared raises ``DatasetNotPreparedError`` with the command.

Horizontal flips are on by default for ``cifar10`` and ``celeba64`` and off
for digits (a mirrored digit is another glyph) and MNIST.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
  "IMAGE_DATASETS",
  "ImageDataset",
  "DatasetNotPreparedError",
  "get_image_dataset",
  "center_crop",
  "preprocess_celeba",
  "CELEBA_CROP_SIZE",
  "DIGITS_NUM_TEST",
  "digits_labelled",
]

DIGITS_NUM_TEST = 300
# Seed of the fixed digits train/test split; changing it changes every result.
_DIGITS_SPLIT_SEED = 0

# The 140x140 center crop of the aligned 178x218 CelebA images is the common
# choice for CelebA-64 and CelebA-32 in score-based models: Song & Ermon 2019
# (NCSN, appendix B.1) and yang-song/score_sde `datasets.py` (`central_crop(img,
# 140)` then `resize_small`, antialiased bilinear). It keeps the whole face and
# drops most of the background.
CELEBA_CROP_SIZE = 140

_TFDS_INSTALL = 'pip install -e ".[tfds]"'
# Reading decodes at most this many full-size images at a time.
_READ_CHUNK = 1024

# [n] int indices -> [n, H, W, C] float32 images in [-1, 1].
Reader = Callable[[np.ndarray], np.ndarray]


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS data set is missing from ``data_dir`` (data is never downloaded at run time)."""


# ----------------------------------------------------------------------------
# The dataset object.


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """An image data set with a fixed train/test split, read by index.

  Attributes:
    name: data set name, one of ``IMAGE_DATASETS``.
    image_shape: ``(H, W, C)`` of every image.
    num_train: number of training images (one epoch).
    num_test: number of test images.
    flip: whether training batches are randomly mirrored left-right.
    read_train: ``[n] int -> [n, H, W, C]`` float32 training images in [-1, 1].
    read_test: the same for the test split.
    description: one-line summary of source and preprocessing.
    num_levels: intensity levels of the stored data (256 for 8-bit images, 17 for
      the digits' 0..16), evenly spaced over [-1, 1]; ``None`` where resampling
      made the values continuous. Bits per dimension dequantise with it.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  flip: bool
  read_train: Reader = dataclasses.field(repr=False)
  read_test: Reader = dataclasses.field(repr=False)
  description: str = ""
  num_levels: int | None = 256

  def train_indices(
    self,
    seed: int,
    step: int,
    batch_size: int,
    *,
    num_batches: int = 1,
    process_index: int = 0,
    process_count: int = 1,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Which training examples ``train_batch`` reads, and which it mirrors.

    Returns:
      ``(indices, flips)``: int64 example indices and bool flip flags, both
      ``[num_batches, batch_size // process_count]``. Flags are all False
      when ``self.flip`` is off.
    """
    seed = _nonnegative_int(seed, "seed")
    step = _nonnegative_int(step, "step")
    batch_size = _positive_int(batch_size, "batch_size")
    num_batches = _positive_int(num_batches, "num_batches")
    process_count = _positive_int(process_count, "process_count")
    process_index = _nonnegative_int(process_index, "process_index")
    if process_index >= process_count:
      raise ValueError(
        f"process_index={process_index} must be smaller than process_count={process_count}"
      )
    if batch_size % process_count:
      raise ValueError(
        f"the global batch_size={batch_size} must be divisible by process_count={process_count} "
        "so that every process reads the same number of examples; change the batch size "
        "or the number of processes"
      )
    local_size = batch_size // process_count
    rows = step * num_batches + np.arange(num_batches, dtype=np.int64)
    positions = (
      rows[:, None] * batch_size + process_index * local_size + np.arange(local_size, dtype=np.int64)
    )
    epochs, offsets = np.divmod(positions, self.num_train)
    indices = np.empty_like(positions)
    flips = np.zeros(positions.shape, dtype=bool)
    # A batch spans at most a few epochs (one, unless it straddles a boundary).
    for epoch in np.unique(epochs):
      order, coins = _epoch_order(self.num_train, seed, int(epoch))
      in_epoch = epochs == epoch
      indices[in_epoch] = order[offsets[in_epoch]]
      if self.flip:
        flips[in_epoch] = coins[offsets[in_epoch]]
    return indices, flips

  def train_batch(
    self,
    seed: int,
    step: int,
    batch_size: int,
    *,
    num_batches: int = 1,
    process_index: int = 0,
    process_count: int = 1,
  ) -> np.ndarray:
    """This process's share of ``num_batches`` global training batches at ``step``.

    A pure function of its arguments: the same ``(seed, step)`` always gives
    the same images, so resuming at a checkpointed step needs no data state.
    One call consumes ``num_batches * batch_size`` examples globally; keep
    ``num_batches`` fixed over a run, since it enters the position formula.

    Args:
      seed: non-negative data seed (shuffling and flips).
      step: non-negative training step.
      batch_size: global batch size, summed over processes.
      num_batches: number of consecutive batches returned together.
      process_index: this process's index in ``[0, process_count)``.
      process_count: number of processes sharing each global batch.

    Returns:
      float32 ``[num_batches, batch_size // process_count, H, W, C]`` in [-1, 1].
    """
    indices, flips = self.train_indices(
      seed,
      step,
      batch_size,
      num_batches=num_batches,
      process_index=process_index,
      process_count=process_count,
    )
    images = self.read_train(indices.reshape(-1))
    flips = flips.reshape(-1)
    if flips.any():
      images[flips] = images[flips, :, ::-1]
    return images.reshape(*indices.shape, *self.image_shape)

  def test_images(self, n: int | None = None) -> np.ndarray:
    """The first ``n`` test images (all if ``None``), in a fixed order, not augmented.

    Returns:
      float32 ``[n, H, W, C]`` in [-1, 1].
    """
    if n is None:
      n = self.num_test
    n = _nonnegative_int(n, "n")
    if n > self.num_test:
      raise ValueError(f"asked for {n} test images but {self.name} has only {self.num_test}")
    return self.read_test(np.arange(n, dtype=np.int64))


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """The example order and flip coins of one epoch (cached: consecutive steps share epochs)."""
  rng = np.random.default_rng([seed, epoch])
  # The permutation is drawn first, so the order does not depend on whether flips are used.
  order = rng.permutation(num_examples)
  coins = rng.random(num_examples) < 0.5
  order.setflags(write=False)
  coins.setflags(write=False)
  return order, coins


def _nonnegative_int(value: Any, name: str) -> int:
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f"{name} must be an integer, got {value!r}") from None
  if value < 0:
    raise ValueError(f"{name} must be non-negative, got {value}")
  return value


def _positive_int(value: Any, name: str) -> int:
  value = _nonnegative_int(value, name)
  if value == 0:
    raise ValueError(f"{name} must be positive, got 0")
  return value


# ----------------------------------------------------------------------------
# Pixel maps shared by the data sets.


def _uint8_to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 ``0..255`` -> float32 ``[-1, 1]``."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central ``size x size`` window of an ``[H, W, ...]`` image.

  Where a margin is odd, its extra pixel stays on the bottom/right side.
  """
  height, width = image.shape[:2]
  if size > min(height, width):
    raise ValueError(f"cannot crop {size}x{size} from a {height}x{width} image")
  top = (height - size) // 2
  left = (width - size) // 2
  return image[top : top + size, left : left + size]


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a uint8 ``[H, W, C]`` image to ``size x size``.

  Pillow widens the bilinear kernel by the scale factor when downsampling
  (antialiasing, as ``tf.image.resize(..., antialias=True)``). The result is
  rounded back to uint8 so that pixels stay on the 256-level grid that
  bits-per-dimension assumes.
  """
  from PIL import Image

  if image.shape[:2] == (size, size):
    return image
  resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(resized, dtype=np.uint8).reshape(size, size, image.shape[-1])


def preprocess_celeba(image: np.ndarray, image_size: int = 64) -> np.ndarray:
  """Aligned CelebA uint8 ``[218, 178, 3]`` -> float32 ``[image_size, image_size, 3]`` in [-1, 1].

  Center crop of ``CELEBA_CROP_SIZE`` (rows 39..178, columns 19..158), then an
  antialiased bilinear resize.
  """
  image = center_crop(np.asarray(image, dtype=np.uint8), CELEBA_CROP_SIZE)
  return _uint8_to_unit(_resize_uint8(image, image_size))


def _pad_mnist(image: np.ndarray, image_size: int) -> np.ndarray:
  """Pads a uint8 ``[28, 28, 1]`` image with background (0) to ``image_size``."""
  pad = image_size - image.shape[0]
  before, after = pad // 2, pad - pad // 2
  return np.pad(image, ((before, after), (before, after), (0, 0)))


# ----------------------------------------------------------------------------
# Digits: in memory, always available.


@functools.lru_cache(maxsize=3)
def digits_labelled(image_size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """``(train, train_labels, test, test_labels)`` of the fixed digits split, read-only.

  Images are float32 ``[n, S, S, 1]`` in [-1, 1]; labels are int32 classes 0..9.
  """
  import sklearn.datasets
  from PIL import Image

  digits = sklearn.datasets.load_digits()
  images = digits.images.astype(np.float32)  # [1797, 8, 8], 0..16
  if image_size != images.shape[1]:
    images = np.stack(
      [
        np.asarray(Image.fromarray(x).resize((image_size, image_size), Image.Resampling.BILINEAR))
        for x in images
      ]
    )
  # Bilinear weights are convex, so the clip only removes float rounding.
  images = np.clip(images / np.float32(8.0) - np.float32(1.0), -1.0, 1.0)[..., None]
  labels = digits.target.astype(np.int32)
  perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
  test, train = perm[:DIGITS_NUM_TEST], perm[DIGITS_NUM_TEST:]
  arrays = (images[train], labels[train], images[test], labels[test])
  for a in arrays:
    a.setflags(write=False)
  return arrays


def _array_reader(images: np.ndarray) -> Reader:
  # Fancy indexing copies, so callers may modify the result.
  return lambda indices: images[np.asarray(indices, dtype=np.int64)]


def _digits(image_size: int, flip: bool) -> ImageDataset:
  train, _, test, _ = digits_labelled(image_size)
  return ImageDataset(
    name="digits",
    image_shape=train.shape[1:],
    num_train=len(train),
    num_test=len(test),
    flip=flip,
    read_train=_array_reader(train),
    read_test=_array_reader(test),
    description=(
      "scikit-learn 8x8 digits (0..16)"
      + (f", bilinear to {image_size}x{image_size}" if image_size != 8 else "")
      + f", fixed {len(train)}/{len(test)} train/test split"
    ),
    num_levels=17 if image_size == 8 else None,  # bilinear upsampling leaves the 17 levels
  )


# ----------------------------------------------------------------------------
# TFDS readers (array_record random access, no TensorFlow).


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


def _tfds_dataset(
  name: str,
  tfds_name: str,
  transform: Callable[[np.ndarray], np.ndarray],
  image_shape: tuple[int, int, int],
  flip: bool,
  data_dir: str | os.PathLike | None,
  description: str,
) -> ImageDataset:
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


# ----------------------------------------------------------------------------
# Factory.

_DEFAULTS = {
  # name: (default image_size, allowed sizes or None for any in [8, 140], default flip)
  "digits": (8, (8, 16, 32), False),
  "mnist": (28, (28, 32), False),
  "cifar10": (32, (32,), True),
  "celeba64": (64, None, True),
}

IMAGE_DATASETS: tuple[str, ...] = tuple(_DEFAULTS)


def get_image_dataset(
  name: str,
  *,
  data_dir: str | os.PathLike | None = None,
  image_size: int | None = None,
  flip: bool | None = None,
) -> ImageDataset:
  """Returns the image data set called ``name`` (one of ``IMAGE_DATASETS``).

  Args:
    name: ``digits`` (offline, 8x8), ``mnist``, ``cifar10`` or ``celeba64``.
    data_dir: TFDS data directory; TFDS's default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``) if ``None``. Ignored for ``digits``.
    image_size: output side length. digits: 8, 16 or 32 (bilinear); mnist: 28
      or 32 (padded); cifar10: 32; celeba64: 8..140 after the 140 crop
      (default 64).
    flip: random horizontal flips of training batches; default on for
      cifar10 and celeba64, off for digits and mnist.

  Raises:
    ValueError: unknown name or unsupported image size.
    ImportError: a TFDS data set without ``tensorflow-datasets`` installed.
    DatasetNotPreparedError: a TFDS data set that is not prepared in ``data_dir``.
  """
  if name not in _DEFAULTS:
    raise ValueError(
      f"unknown image dataset {name!r}; valid choices are: {', '.join(IMAGE_DATASETS)}"
    )
  default_size, sizes, default_flip = _DEFAULTS[name]
  size = default_size if image_size is None else _positive_int(image_size, "image_size")
  if (sizes is not None and size not in sizes) or (sizes is None and not 8 <= size <= CELEBA_CROP_SIZE):
    allowed = ", ".join(map(str, sizes)) if sizes else f"8 to {CELEBA_CROP_SIZE}"
    raise ValueError(f"image_size={size} is not supported for {name}; choose {allowed}")
  flip = default_flip if flip is None else bool(flip)

  if name == "digits":
    return _digits(size, flip)
  if name == "mnist":
    return _tfds_dataset(
      name,
      "mnist",
      lambda image: _uint8_to_unit(_pad_mnist(image, size)),
      (size, size, 1),
      flip,
      data_dir,
      f"TFDS mnist, 28x28 padded to {size}x{size}" if size != 28 else "TFDS mnist, 28x28",
    )
  if name == "cifar10":
    return _tfds_dataset(
      name, "cifar10", _uint8_to_unit, (32, 32, 3), flip, data_dir, "TFDS cifar10, 32x32"
    )
  return _tfds_dataset(
    name,
    "celeb_a",
    functools.partial(preprocess_celeba, image_size=size),
    (size, size, 3),
    flip,
    data_dir,
    f"TFDS celeb_a, center crop {CELEBA_CROP_SIZE}, bilinear to {size}x{size}",
  )
