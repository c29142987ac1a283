"""Convolutional models for images in [-1, 1]: DCGAN and ResNet bodies, and the heads that
give them the toy models' contracts.

The architecture lives in two bodies per family, and the contract in shared heads:

    DCGANDecoder, ResNetDecoder   z [d] -> image [H, W, C] in (-1, 1)
    DCGANTrunk, ResNetTrunk       image [H, W, C] (+ time features) -> features [F]
    ImageGenerator(decoder)       z -> G(z), plus the learnable noise scale `sigma()`
    ConvEnergy(trunk)             x -> scalar, plus the Gaussian confinement term
    ConvTimeEnergy(trunk)         (x, t) -> scalar; t adds per-channel biases in every block
    ConvCritic(trunk)             (x, z) -> scalar
    ConvGaussianEncoder(trunk)    (x, z) -> log r(z | x), a diagonal Gaussian (Barber–Agakov)

Every call takes one example or any number of leading batch axes, and nothing couples the
examples of a batch (no batch normalisation): the generator's Jacobian is computed per
example, and several bounds differentiate `∇_x E` again, hence smooth activations (silu).
Images are square with side `4 · 2^stages`: each stage doubles (decoder) or halves (trunk)
the side, so one family serves 8×8 digits (1 stage) up to 64×64 (4 stages).
`build_image_networks` wires the four players of one architecture from plain values.
"""

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bdbounds.models.common import clamped_sigma, confinement, sigma_logit
from bdbounds.models.toy import MLP, diagonal_gaussian_log_density

UPSAMPLING_MODES = ("nearest", "transpose", "pixel_shuffle")

# Per pixel the confinement is x²/(2s²) ≤ 1/(2s²) on the data cube [-1, 1]^D: with s = 2 at
# most 0.125 nats per dimension, small beside the per-pixel energies the network learns, so
# it barely biases the model. The toy value s = 5 would be too loose: neither the data nor the
# tanh generator ever trains the energy outside the cube, and there a network of slope L
# can dig a spurious well at radius L·s² of depth L²s²/2, which grows with s².
IMAGE_BASE_STD = 2.0


def num_stages(image_shape: Sequence[int]) -> int:
  """Resampling stages between 4×4 and a square `[H, W, C]` image with `H = W = 4 · 2^stages`."""
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (height, width, channels); got {tuple(image_shape)}")
  height, width, _ = image_shape
  ratio = height // 4
  if height != width or height % 4 or ratio < 1 or ratio & (ratio - 1):
    raise ValueError(f"image_shape {tuple(image_shape)} must be square with side 4·2^k "
                     "(4, 8, 16, 32, 64, ...)")
  return ratio.bit_length() - 1


def _flatten_batch(x, event_ndim):
  """`[..., *event] -> [N, *event]`, and the leading shape to restore afterwards."""
  split = x.ndim - event_ndim
  return x.reshape((-1,) + x.shape[split:]), x.shape[:split]


def _flatten_images(x, image_shape):
  if x.shape[-3:] != tuple(image_shape):
    raise ValueError(f"x must have trailing shape {tuple(image_shape)}; got {x.shape}")
  return _flatten_batch(x, 3)


def _time_bias(h, time_features, name):
  """Adds `Dense(time_features)` as a per-channel bias; no-op without time features."""
  if time_features is None:
    return h
  return h + nn.Dense(h.shape[-1], name=name)(time_features)[:, None, None, :]


def _upsample_nearest(h):
  return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


def depth_to_space(h):
  """`[N, H, W, 4C] -> [N, 2H, 2W, C]`: each group of 4 channels becomes a 2×2 patch."""
  n, height, width, channels = h.shape
  h = h.reshape(n, height, width, 2, 2, channels // 4)
  return h.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * height, 2 * width, channels // 4)


class Upsample(nn.Module):
  """Doubles the side of `[N, H, W, C_in]` and maps it to `features` channels.

  "nearest": repeat each pixel 2×2, then a 3×3 conv (resize-conv: no checkerboard
  artefacts). "transpose": a 4×4 stride-2 transposed conv (a kernel side that is a multiple
  of the stride covers every output pixel equally). "pixel_shuffle": a 3×3 conv to
  4·features channels at the low resolution, then depth-to-space. Each output phase of the
  other two reads a 2×2 low-resolution window, so "pixel_shuffle" (same FLOPs as "nearest",
  4× its weights) can represent both. On XLA:CPU the weight gradient of "transpose" is an
  order of magnitude slower than the others (bench/upsampling.py).
  """
  features: int
  mode: str = "nearest"

  @nn.compact
  def __call__(self, h):
    if self.mode == "nearest":
      return nn.Conv(self.features, (3, 3), name="conv")(_upsample_nearest(h))
    if self.mode == "transpose":
      return nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), name="conv")(h)
    if self.mode == "pixel_shuffle":
      return depth_to_space(nn.Conv(4 * self.features, (3, 3), name="conv")(h))
    raise ValueError(f"unknown upsampling {self.mode!r}; choose one of {UPSAMPLING_MODES}")


# --------------------------------------------------------------------------- DCGAN

class DCGANDecoder(nn.Module):
  """`z [..., d] -> [..., H, W, C]` in (-1, 1), DCGAN without batch normalisation.

  Dense → 4×4×(width·2^stages) → stages of [×2 upsample → act], halving the channels down
  to `width` → 3×3 conv to C → tanh. For 32×32: 4×4×8w → 8×8×4w → 16×16×2w → 32×32×w.
  """
  image_shape: Sequence[int] = (32, 32, 3)
  width: int = 64
  act: str = "silu"
  upsample: str = "nearest"

  @nn.compact
  def __call__(self, z):
    stages = num_stages(self.image_shape)
    act = getattr(nn, self.act)
    z, batch_shape = _flatten_batch(z, 1)
    channels = self.width * 2**stages
    h = act(nn.Dense(4 * 4 * channels, name="project")(z)).reshape(-1, 4, 4, channels)
    for i in range(stages):
      channels //= 2
      h = act(Upsample(channels, self.upsample, name=f"up_{i}")(h))
    h = nn.Conv(self.image_shape[-1], (3, 3), name="to_image")(h)
    return jnp.tanh(h).reshape(batch_shape + tuple(self.image_shape))


class PatchConv(nn.Module):
  """A stride-2 convolution with SAME padding written as its patches times the kernel: the same
  parameters (`kernel [k, k, C_in, C_out]`, `bias`) and the same function as `nn.Conv(…,
  strides=(2, 2))`, to float rounding. XLA's CPU convolutions differentiate a strided convolution
  a second time very slowly (the input gradient of the input gradient: 45× the first derivative
  for a 4×4 stride-2 conv at 32², bench/README.md), which R1 and score matching need; as strided
  slices and one matrix product, every derivative stays a slice, a pad or a matrix product."""
  features: int
  kernel_size: int = 4

  @nn.compact
  def __call__(self, x):
    k, (height, width, channels) = self.kernel_size, x.shape[-3:]
    if height % 2 or width % 2:
      raise ValueError(f"PatchConv needs an even height and width; got {x.shape[-3:]}")
    # nn.Conv's initialisers and parameter dtype, so either way a run starts from the same numbers.
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, channels, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    dtype = jnp.promote_types(x.dtype, kernel.dtype)  # as nn.Conv promotes
    x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
    low = (k - 2) // 2  # SAME padding of a stride-2 window on an even side: k − 2 in all
    padded = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((low, k - 2 - low),) * 2 + ((0, 0),))
    patches = jnp.stack([padded[..., a:a + height:2, b:b + width:2, :] for a in range(k) for b in range(k)], axis=-2)
    return jnp.einsum("...pc,pcf->...f", patches, kernel.reshape(k * k, channels, self.features)) + bias


STRIDED_CONVS = ("patches", "xla")


class DCGANTrunk(nn.Module):
  """`x [..., H, W, C] -> features [..., 4·4·width·2^stages]`, the DCGAN discriminator body.

  3×3 conv to `width` → act → stages of [`kernel_size` stride-2 conv → act], doubling the
  channels → flatten. With `time_features [..., T]`, each block adds `Dense(time_features)`
  as per-channel biases before its activation.
  """
  image_shape: Sequence[int] = (32, 32, 3)
  width: int = 64
  act: str = "silu"
  kernel_size: int = 4
  strided_conv: str = "patches"   # how the stride-2 convolutions are computed: patches (PatchConv) | xla

  @nn.compact
  def __call__(self, x, time_features=None):
    stages = num_stages(self.image_shape)
    act = getattr(nn, self.act)
    x, batch_shape = _flatten_images(x, self.image_shape)
    if time_features is not None:
      time_features = time_features.reshape(x.shape[0], -1)
    channels = self.width
    h = act(_time_bias(nn.Conv(channels, (3, 3), name="stem")(x), time_features, "time_0"))
    for i in range(stages):
      channels *= 2
      if self.strided_conv == "patches":
        h = PatchConv(channels, self.kernel_size, name=f"down_{i}")(h)
      else:
        h = nn.Conv(channels, (self.kernel_size,) * 2, strides=(2, 2), name=f"down_{i}")(h)
      h = act(_time_bias(h, time_features, f"time_{i + 1}"))
    return h.reshape(batch_shape + (-1,))


# --------------------------------------------------------------------------- ResNet

class _UpBlock(nn.Module):
  """act → ×2 nearest → conv3×3 → act → conv3×3, plus a 1×1-conv shortcut of the upsampled input."""
  features: int
  act: str = "silu"

  @nn.compact
  def __call__(self, x):
    act = getattr(nn, self.act)
    h = nn.Conv(self.features, (3, 3), name="conv_0")(_upsample_nearest(act(x)))
    h = nn.Conv(self.features, (3, 3), name="conv_1")(act(h))
    # A 1×1 conv commutes with nearest upsampling: convolve first, at a quarter of the cost.
    return h + _upsample_nearest(nn.Conv(self.features, (1, 1), name="shortcut")(x))


class _DownBlock(nn.Module):
  """act → conv3×3 (+ time bias) → act → conv3×3 → avg-pool ×2, plus a 1×1-conv + avg-pool shortcut.

  The first block skips the leading activation (SNGAN's "optimised" block): it would act on
  raw pixels. The last block keeps its resolution, so the trunk ends at 4×4.
  """
  features: int
  act: str = "silu"
  downsample: bool = True
  preactivate: bool = True

  @nn.compact
  def __call__(self, x, time_features=None):
    act = getattr(nn, self.act)
    h = act(x) if self.preactivate else x
    h = _time_bias(nn.Conv(self.features, (3, 3), name="conv_0")(h), time_features, "time")
    h = nn.Conv(self.features, (3, 3), name="conv_1")(act(h))
    pool = (lambda y: nn.avg_pool(y, (2, 2), strides=(2, 2))) if self.downsample else (lambda y: y)
    # Pooling and a 1×1 conv commute: pool first, at a quarter of the cost.
    return pool(h) + nn.Conv(self.features, (1, 1), name="shortcut")(pool(x))


class ResNetDecoder(nn.Module):
  """`z [..., d] -> [..., H, W, C]` in (-1, 1), the SNGAN ResNet generator without batch norm.

  Dense → 4×4×(width·2^stages) → up residual blocks halving the channels down to `width`
  (for 64×64: 16w → 8w → 4w → 2w → w) → act → conv3×3 → tanh.
  """
  image_shape: Sequence[int] = (64, 64, 3)
  width: int = 64
  act: str = "silu"

  @nn.compact
  def __call__(self, z):
    stages = num_stages(self.image_shape)
    z, batch_shape = _flatten_batch(z, 1)
    channels = self.width * 2**stages
    h = nn.Dense(4 * 4 * channels, name="project")(z).reshape(-1, 4, 4, channels)
    for i in range(stages):
      channels //= 2
      h = _UpBlock(channels, self.act, name=f"block_{i}")(h)
    h = nn.Conv(self.image_shape[-1], (3, 3), name="to_image")(getattr(nn, self.act)(h))
    return jnp.tanh(h).reshape(batch_shape + tuple(self.image_shape))


class ResNetTrunk(nn.Module):
  """`x [..., H, W, C] -> features [..., width·2^stages]`, the SNGAN ResNet discriminator body.

  Down residual blocks with channels width·2^i, i = 0..stages (for 64×64: w → 2w → 4w → 8w
  → 16w), each but the last halving the side → act → sum over space. With
  `time_features [..., T]`, each block adds per-channel biases after its first conv.
  """
  image_shape: Sequence[int] = (64, 64, 3)
  width: int = 64
  act: str = "silu"

  @nn.compact
  def __call__(self, x, time_features=None):
    stages = num_stages(self.image_shape)
    x, batch_shape = _flatten_images(x, self.image_shape)
    if time_features is not None:
      time_features = time_features.reshape(x.shape[0], -1)
    h = x
    for i in range(stages + 1):
      h = _DownBlock(self.width * 2**i, self.act, downsample=i < stages, preactivate=i > 0,
                     name=f"block_{i}")(h, time_features)
    h = jnp.sum(getattr(nn, self.act)(h), axis=(1, 2))
    return h.reshape(batch_shape + (-1,))


# --------------------------------------------------------------------------- heads

def _fourier_features(t, num_frequencies):
  """`t [..., 1] -> [t, sin(π 2^k t), cos(π 2^k t)]`, k < num_frequencies (as the toy TimeEnergy)."""
  freqs = jnp.pi * 2.0 ** jnp.arange(num_frequencies, dtype=t.dtype)
  return jnp.concatenate([t, jnp.sin(freqs * t), jnp.cos(freqs * t)], axis=-1)


class ImageGenerator(nn.Module):
  """`z -> x = G(z)` by `decoder`, and a learnable noise scale for the noisy generator.

  As the toy `Generator`: `sigma()` lies in `[sigma_min, sigma_max]` by a sigmoid of the
  top-level parameter `sigma_logit`; the caller adds the noise.
  """
  decoder: nn.Module
  sigma_min: float = 0.01
  sigma_max: float = 0.5
  sigma_init: float = 0.1

  def setup(self):
    logit = sigma_logit(self.sigma_min, self.sigma_max, self.sigma_init)
    self.sigma_logit = self.param("sigma_logit", lambda _: jnp.asarray(logit, jnp.float32))

  def __call__(self, z):
    return self.decoder(z)

  def sigma(self):
    return clamped_sigma(self.sigma_logit, self.sigma_min, self.sigma_max)


class ConvEnergy(nn.Module):
  """`E(x) = Dense(trunk(x)) + ‖x‖² / (2 s²)`, s = `base_std`; `exp(−E)` stays normalisable
  because the network grows at most linearly in x."""
  trunk: nn.Module
  base_std: float = IMAGE_BASE_STD

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, name="head")(self.trunk(x))[..., 0] + confinement(x, self.base_std, 3)


class ConvTimeEnergy(nn.Module):
  """`E(x, t)`, t ∈ [0, 1] (a scalar, or one per example): Fourier features of t set
  per-channel biases in every block of `trunk`; `E(·, 0)` is the EBM."""
  trunk: nn.Module
  num_frequencies: int = 8
  base_std: float = IMAGE_BASE_STD

  @nn.compact
  def __call__(self, x, t):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-3])[..., None]
    features = self.trunk(x, time_features=_fourier_features(t, self.num_frequencies))
    return nn.Dense(1, name="head")(features)[..., 0] + confinement(x, self.base_std, 3)


class ConvCritic(nn.Module):
  """`T(x, z)`: an MLP on the trunk's features of x concatenated with z; a scalar MI critic."""
  trunk: nn.Module
  hidden: Sequence[int] = (256,)
  act: str = "silu"

  @nn.compact
  def __call__(self, x, z):
    return MLP(self.hidden, 1, self.act, name="head")(jnp.concatenate([self.trunk(x), z], axis=-1))


class ConvGaussianEncoder(nn.Module):
  """`log r(z | x)`, `r = N(μ(x), diag s(x)²)` from an MLP head on the trunk's features of x: the
  Barber–Agakov encoder in the critic's slot, `(x, z) -> scalar`, as the toy `GaussianEncoder`."""
  trunk: nn.Module
  hidden: Sequence[int] = (256,)
  act: str = "silu"
  min_std: float = 1e-4

  @nn.compact
  def __call__(self, x, z):
    outputs = MLP(self.hidden, 2 * z.shape[-1], self.act, name="head")(self.trunk(x))
    return diagonal_gaussian_log_density(outputs, z, self.min_std)


# --------------------------------------------------------------------------- lookup

class ImageNetworks(NamedTuple):
  """The four players of one architecture, as unbound modules."""
  energy: ConvEnergy
  generator: ImageGenerator
  critic: ConvCritic | ConvGaussianEncoder   # the encoder log r(z | x) with `encoder_critic`
  time_energy: ConvTimeEnergy


IMAGE_ARCHITECTURES = {"dcgan": (DCGANTrunk, DCGANDecoder), "resnet": (ResNetTrunk, ResNetDecoder)}


def build_image_networks(arch: str, image_shape: Sequence[int], *, width: int = 64,
                         act: str = "silu", upsample: str = "nearest",
                         base_std: float = IMAGE_BASE_STD, critic_hidden: Sequence[int] = (256,),
                         num_frequencies: int = 8, sigma_min: float = 0.01,
                         sigma_max: float = 0.5, sigma_init: float = 0.1,
                         encoder_critic: bool = False, strided_conv: str = "patches") -> ImageNetworks:
  """Energy, generator, critic and time-conditioned energy of `arch` ("dcgan" | "resnet").

  Each player gets its own trunk or decoder (nothing is shared between players). The latent
  dimension is whatever z the generator is initialised with. `upsample` applies to "dcgan";
  the ResNet blocks upsample by nearest repetition only. `encoder_critic` puts the Gaussian encoder
  of the Barber–Agakov bound in the critic's slot. `strided_conv` picks how the "dcgan" trunk's
  stride-2 convolutions are computed (`PatchConv`, or XLA's convolution): the same function.
  """
  if arch not in IMAGE_ARCHITECTURES:
    raise ValueError(f"unknown image architecture {arch!r}; choose one of {sorted(IMAGE_ARCHITECTURES)}")
  if upsample not in UPSAMPLING_MODES:
    raise ValueError(f"unknown upsampling {upsample!r}; choose one of {UPSAMPLING_MODES}")
  if arch == "resnet" and upsample != "nearest":
    raise ValueError(f"the resnet architecture upsamples by nearest repetition only; got {upsample!r}")
  image_shape = tuple(image_shape)
  num_stages(image_shape)  # fail here, not at the first call
  trunk_cls, decoder_cls = IMAGE_ARCHITECTURES[arch]
  if strided_conv not in STRIDED_CONVS:
    raise ValueError(f"unknown strided convolution {strided_conv!r}; choose one of {STRIDED_CONVS}")
  trunk_kwargs = {"strided_conv": strided_conv} if arch == "dcgan" else {}
  trunk = lambda: trunk_cls(image_shape=image_shape, width=width, act=act, **trunk_kwargs)
  decoder_kwargs = {"upsample": upsample} if arch == "dcgan" else {}
  decoder = decoder_cls(image_shape=image_shape, width=width, act=act, **decoder_kwargs)
  return ImageNetworks(
      energy=ConvEnergy(trunk(), base_std=base_std),
      generator=ImageGenerator(decoder, sigma_min=sigma_min, sigma_max=sigma_max, sigma_init=sigma_init),
      critic=(ConvGaussianEncoder if encoder_critic else ConvCritic)(trunk(), hidden=tuple(critic_hidden), act=act),
      time_energy=ConvTimeEnergy(trunk(), num_frequencies=num_frequencies, base_std=base_std))
