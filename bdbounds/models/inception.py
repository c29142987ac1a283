"""The Inception-v3 behind standard FID numbers, in Flax.

This is the 2015-12-05 TensorFlow Inception graph of the original FID code, as pytorch-fid
re-implements it (`fid_inception_v3`): torchvision's Inception-v3 with 1008 classes, no
auxiliary head, and patched blocks that follow TensorFlow where torchvision does not:

    FIDInceptionA, FIDInceptionC, FIDInceptionE(max_pool=False)   the 3×3 average pools ignore
        the zero padding (TensorFlow's SAME pooling; PyTorch's count_include_pad=False)
    FIDInceptionE(max_pool=True) in Mixed_7c                      max-pools where the paper
        average-pools, as the graph does

    images [N, H, W, C] in [-1, 1], C ∈ {1, 3} (grey is repeated to RGB)
      → bilinear resize to 299×299 → stem (35×35×192) → Mixed_5b..5d (35×35) → Mixed_6a..6e
      (17×17×768) → Mixed_7a..7c (8×8×2048) → spatial mean: "pool3" features [N, 2048]
      → fc: logits [N, 1008]

Submodule names mirror the PyTorch state dict (`Conv2d_1a_3x3`, ..., `Mixed_5b/branch5x5_1`,
each a `conv` and a `bn`; `fc`). The variables are read from a local weights file by
`bdbounds.evaluators.inception_weights`; this module opens no files.
"""

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_SIZE = 299    # the side every image is resized to
MIN_SIZE = 75           # the smallest side the layers accept without resizing
NUM_FEATURES = 2048     # pool3
NUM_CLASSES = 1008      # the 2015 graph's softmax: 1000 ImageNet classes and 8 unused
BN_EPSILON = 1e-3


# --------------------------------------------------------------------------- layers

PrecisionLike = Any   # None, a string such as "highest", or a jax.lax.Precision


def _pair(value):
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Conv without bias → batch norm with the stored statistics (ε = 1e-3) → ReLU.

  `padding` is PyTorch's symmetric zero padding per spatial axis; 0 is 'VALID'.
  """
  features: int
  kernel_size: int | Sequence[int] = 1
  strides: int = 1
  padding: int | Sequence[int] = 0
  precision: PrecisionLike = "highest"

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.strides),
                padding=[(p, p) for p in _pair(self.padding)], use_bias=False,
                precision=self.precision, name="conv")(x)
    # Inference only: the stored mean and variance, never the batch's (examples stay independent).
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def avg_pool_3x3(x):
  """3×3 stride-1 mean over the window's pixels that lie inside the image.

  TensorFlow's SAME pooling, PyTorch's count_include_pad=False: a corner averages 4 pixels,
  not 4 pixels and 5 zeros.
  """
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride, padding=0):
  """3×3 max pool; padding counts as -inf, as in PyTorch."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding),) * 2)


class _Block(nn.Module):
  """Shared field and conv factory of the mixed blocks."""
  precision: PrecisionLike = "highest"

  def conv(self, features, kernel_size=1, *, name, **kwargs):
    return BasicConv2d(features, kernel_size, precision=self.precision, name=name, **kwargs)


class FIDInceptionA(_Block):
  """Mixed_5b..5d, 35×35: 64 + 64 + 96 + `pool_features` channels."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    branch1x1 = self.conv(64, name="branch1x1")(x)
    branch5x5 = self.conv(48, name="branch5x5_1")(x)
    branch5x5 = self.conv(64, 5, padding=2, name="branch5x5_2")(branch5x5)
    branch3x3dbl = self.conv(64, name="branch3x3dbl_1")(x)
    branch3x3dbl = self.conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = self.conv(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = self.conv(self.pool_features, name="branch_pool")(avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(_Block):
  """Mixed_6a, 35×35 → 17×17: 384 + 96 channels + the input's (max pool)."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = self.conv(384, 3, strides=2, name="branch3x3")(x)
    branch3x3dbl = self.conv(64, name="branch3x3dbl_1")(x)
    branch3x3dbl = self.conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = self.conv(96, 3, strides=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool(x, 2)], axis=-1)


class FIDInceptionC(_Block):
  """Mixed_6b..6e, 17×17: 4 × 192 channels; factorised 7×7 convs of width `channels_7x7`."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = self.conv(192, name="branch1x1")(x)
    branch7x7 = self.conv(c7, name="branch7x7_1")(x)
    branch7x7 = self.conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = self.conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    branch7x7dbl = self.conv(c7, name="branch7x7dbl_1")(x)
    branch7x7dbl = self.conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = self.conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = self.conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = self.conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
    branch_pool = self.conv(192, name="branch_pool")(avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(_Block):
  """Mixed_7a, 17×17 → 8×8: 320 + 192 channels + the input's (max pool)."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = self.conv(192, name="branch3x3_1")(x)
    branch3x3 = self.conv(320, 3, strides=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = self.conv(192, name="branch7x7x3_1")(x)
    branch7x7x3 = self.conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = self.conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = self.conv(192, 3, strides=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool(x, 2)], axis=-1)


class FIDInceptionE(_Block):
  """Mixed_7b (`max_pool=False`, pytorch-fid's E_1) and Mixed_7c (`max_pool=True`, E_2), 8×8:
  320 + 2·384 + 2·384 + 192 = 2048 channels."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    branch1x1 = self.conv(320, name="branch1x1")(x)
    branch3x3 = self.conv(384, name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate([
        self.conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        self.conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3)], axis=-1)
    branch3x3dbl = self.conv(448, name="branch3x3dbl_1")(x)
    branch3x3dbl = self.conv(384, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        self.conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
        self.conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl)], axis=-1)
    pooled = _max_pool(x, 1, padding=1) if self.max_pool else avg_pool_3x3(x)
    branch_pool = self.conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


def resize_to_inception(images):
  """`[N, H, W, C] -> [N, 299, 299, C]` as pytorch-fid resizes (F.interpolate, bilinear,
  align_corners=False).

  Both sample at half-pixel centres with the two nearest pixels, clamped at the border, and
  neither antialiases when shrinking; `jax.image.resize` without antialiasing is that map.
  pytorch-fid notes that its FIDs differ slightly from the TensorFlow code's, the image
  interpolation being one cause; numbers here follow pytorch-fid.
  """
  n, height, width, channels = images.shape
  if (height, width) == (INCEPTION_SIZE, INCEPTION_SIZE):
    return images
  return jax.image.resize(images, (n, INCEPTION_SIZE, INCEPTION_SIZE, channels), "bilinear",
                          antialias=False)


class FIDInceptionV3(nn.Module):
  """`images [N, H, W, C]` in [-1, 1] → `(features [N, 2048], logits [N, 1008])`.

  `resize_input=False` feeds the images at their own size (at least 75×75): only for tests
  and for inputs already at 299×299. `precision="highest"` keeps convolutions in full
  float32 on GPUs, whose default (TF32) would perturb the features.
  """
  resize_input: bool = True
  precision: PrecisionLike = "highest"

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"images must be [N, H, W, C] with C = 1 or 3; got shape {images.shape}")
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if self.resize_input:
      x = resize_to_inception(x)
    elif min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"without resizing, images must be at least {MIN_SIZE}×{MIN_SIZE}; "
                       f"got {x.shape[1:3]}")
    conv = functools.partial(BasicConv2d, precision=self.precision)
    block = lambda cls, name, **kwargs: cls(precision=self.precision, name=name, **kwargs)
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 2)
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 2)
    x = block(FIDInceptionA, "Mixed_5b", pool_features=32)(x)
    x = block(FIDInceptionA, "Mixed_5c", pool_features=64)(x)
    x = block(FIDInceptionA, "Mixed_5d", pool_features=64)(x)
    x = block(InceptionB, "Mixed_6a")(x)
    x = block(FIDInceptionC, "Mixed_6b", channels_7x7=128)(x)
    x = block(FIDInceptionC, "Mixed_6c", channels_7x7=160)(x)
    x = block(FIDInceptionC, "Mixed_6d", channels_7x7=160)(x)
    x = block(FIDInceptionC, "Mixed_6e", channels_7x7=192)(x)
    x = block(InceptionD, "Mixed_7a")(x)
    x = block(FIDInceptionE, "Mixed_7b", max_pool=False)(x)
    x = block(FIDInceptionE, "Mixed_7c", max_pool=True)(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(features)
    return features, logits


def build_fid_inception(*, resize_input: bool = True,
                        precision: PrecisionLike = "highest") -> FIDInceptionV3:
  """The FID Inception as an unbound module; its variables come from
  `bdbounds.evaluators.inception_weights.load_inception_variables`."""
  return FIDInceptionV3(resize_input=resize_input, precision=precision)


# --------------------------------------------------------------------------- evaluation

@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, images):
  # The module is static (hashable fields), so every function made for it shares one cache.
  return module.apply(variables, images)


def make_inception_fn(variables: Mapping, batch_size: int = 50, *,
                      module: FIDInceptionV3 | None = None
                      ) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
  """`images [N, H, W, C]` in [-1, 1] (C = 1 or 3) → host arrays `(features [N, 2048],
  logits [N, 1008])`, in jitted batches of `batch_size`.

  The last batch is padded to full size, so one shape compiles once; examples never interact
  (batch norm uses its stored statistics). `module` defaults to `build_fid_inception()`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive; got {batch_size}")
  module = build_fid_inception() if module is None else module
  variables = jax.tree.map(jnp.asarray, dict(variables))

  def inception_fn(images):
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
      raise ValueError(f"images must be [N, H, W, C] with N ≥ 1 and C = 1 or 3; "
                       f"got shape {images.shape}")
    low, high = float(images.min()), float(images.max())   # on the host for NumPy input
    if low < -1.001 or high > 1.001:
      raise ValueError(f"images must lie in [-1, 1]; got values in [{low:.4g}, {high:.4g}] "
                       "(map 8-bit pixels by x / 127.5 - 1)")
    outputs = []
    for start in range(0, images.shape[0], batch_size):
      batch = jnp.asarray(images[start:start + batch_size], jnp.float32)
      count = batch.shape[0]
      if batch.shape[-1] == 1:   # here, not in the jitted call: grey and RGB share one compilation
        batch = jnp.repeat(batch, 3, axis=-1)
      batch = jnp.pad(batch, ((0, batch_size - count), (0, 0), (0, 0), (0, 0)))
      features, logits = _apply(module, variables, batch)
      outputs.append((features[:count], logits[:count]))
    features, logits = zip(*outputs)
    return np.concatenate(features), np.concatenate(logits)

  return inception_fn

