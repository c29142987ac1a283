"""The image data sets behind one deterministic, resumable batch function.

Each is an :class:`~bdbounds.data.image_dataset.ImageDataset` (float32 images
in ``[-1, 1]``, batches a pure function of ``(seed, step)``: see
:mod:`bdbounds.data.image_dataset`), made by :func:`get_image_dataset`.

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

The TFDS data sets are read by index from prepared ``array_record`` files
(:mod:`bdbounds.data.tfds_images`), never downloaded at run time; one that is
not prepared raises ``DatasetNotPreparedError`` with the command.

Horizontal flips are on by default for ``cifar10`` and ``celeba64`` and off
for digits (a mirrored digit is another glyph) and MNIST.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from bdbounds.data.image_dataset import ImageDataset, Reader, positive_int
from bdbounds.data.tfds_images import DatasetNotPreparedError, tfds_dataset

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
  size = default_size if image_size is None else positive_int(image_size, "image_size")
  if (sizes is not None and size not in sizes) or (sizes is None and not 8 <= size <= CELEBA_CROP_SIZE):
    allowed = ", ".join(map(str, sizes)) if sizes else f"8 to {CELEBA_CROP_SIZE}"
    raise ValueError(f"image_size={size} is not supported for {name}; choose {allowed}")
  flip = default_flip if flip is None else bool(flip)

  if name == "digits":
    return _digits(size, flip)
  if name == "mnist":
    return tfds_dataset(
      name,
      "mnist",
      lambda image: _uint8_to_unit(_pad_mnist(image, size)),
      (size, size, 1),
      flip,
      data_dir,
      f"TFDS mnist, 28x28 padded to {size}x{size}" if size != 28 else "TFDS mnist, 28x28",
    )
  if name == "cifar10":
    return tfds_dataset(
      name, "cifar10", _uint8_to_unit, (32, 32, 3), flip, data_dir, "TFDS cifar10, 32x32"
    )
  return tfds_dataset(
    name,
    "celeb_a",
    functools.partial(preprocess_celeba, image_size=size),
    (size, size, 3),
    flip,
    data_dir,
    f"TFDS celeb_a, center crop {CELEBA_CROP_SIZE}, bilinear to {size}x{size}",
  )
