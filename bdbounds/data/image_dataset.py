"""The image data set object and its deterministic, resumable batch function.

Every data set is an ``ImageDataset``: float32 images in ``[-1, 1]`` of shape
``[H, W, C]``, read by index. Training batches are a pure function of
``(seed, step)``, so a run resumed from a checkpointed step sees exactly the
data an uninterrupted run would have seen, with no iterator state to save:

* the global example position of row ``i`` of batch ``b`` at ``step`` is
  ``p = (step * num_batches + b) * batch_size + i``;
* its epoch is ``p // num_train``; within an epoch, examples follow the
  permutation drawn by ``np.random.default_rng([seed, epoch])``
  (:func:`epoch_order`);
* the horizontal flip of position ``p`` (where flips are on) is a coin drawn by
  the same generator, so it too depends on ``(seed, p)`` only.

With several processes, each reads only its own contiguous slice of every
global batch; concatenating the slices of processes ``0..P-1`` gives the
single-process batch.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable

import numpy as np

__all__ = ["ImageDataset", "Reader", "epoch_order", "nonnegative_int", "positive_int"]

# [n] int indices -> [n, H, W, C] float32 images in [-1, 1].
Reader = Callable[[np.ndarray], np.ndarray]


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
    seed = nonnegative_int(seed, "seed")
    step = nonnegative_int(step, "step")
    batch_size = positive_int(batch_size, "batch_size")
    num_batches = positive_int(num_batches, "num_batches")
    process_count = positive_int(process_count, "process_count")
    process_index = nonnegative_int(process_index, "process_index")
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
      order, coins = epoch_order(self.num_train, seed, int(epoch))
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
    n = nonnegative_int(n, "n")
    if n > self.num_test:
      raise ValueError(f"asked for {n} test images but {self.name} has only {self.num_test}")
    return self.read_test(np.arange(n, dtype=np.int64))


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """The example order and flip coins of one epoch, as read-only arrays ``[num_examples]``.

  Both are drawn by ``np.random.default_rng([seed, epoch])``. Cached, since consecutive
  steps share epochs; ``epoch_order.cache_clear()`` empties the cache (as a restarted
  process would find it).
  """
  rng = np.random.default_rng([seed, epoch])
  # The permutation is drawn first, so the order does not depend on whether flips are used.
  order = rng.permutation(num_examples)
  coins = rng.random(num_examples) < 0.5
  order.setflags(write=False)
  coins.setflags(write=False)
  return order, coins


def nonnegative_int(value: Any, name: str) -> int:
  """``value`` as an ``int`` (any integer type); raises naming ``name`` if it is not one or negative."""
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f"{name} must be an integer, got {value!r}") from None
  if value < 0:
    raise ValueError(f"{name} must be non-negative, got {value}")
  return value


def positive_int(value: Any, name: str) -> int:
  """``value`` as an ``int`` greater than 0; raises naming ``name`` otherwise."""
  value = nonnegative_int(value, name)
  if value == 0:
    raise ValueError(f"{name} must be positive, got 0")
  return value
