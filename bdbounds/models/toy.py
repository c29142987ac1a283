"""Small MLPs for 2-D data: energy, generator (optionally noisy), critic, Gaussian encoder,
time-conditioned energy."""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bdbounds.models.common import clamped_sigma, confinement, sigma_logit


class MLP(nn.Module):
  """`x [..., D_in] -> [..., out]` with `act` between Dense layers; `out = 1` is squeezed.

  `input_scale` multiplies the input: with Adam, whose steps have a fixed size per weight,
  it sets how fast the first layer can learn features at the data's length scale (sharp
  modes need large first-layer weights).
  """
  hidden: Sequence[int] = (100, 100)
  out: int = 1
  act: str = "silu"
  input_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    act = getattr(nn, self.act)
    x = x * self.input_scale
    for width in self.hidden:
      x = act(nn.Dense(width)(x))
    x = nn.Dense(self.out)(x)
    return x[..., 0] if self.out == 1 else x


class Energy(nn.Module):
  """`E(x) = MLP(x) + ‖x‖² / (2 s²)`: the Gaussian base term (s = `base_std`) keeps
  `exp(−E)` normalisable whatever the MLP learns, since the MLP grows at most linearly."""
  hidden: Sequence[int] = (100, 100)
  act: str = "silu"
  base_std: float = 5.0
  input_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    return MLP(self.hidden, 1, self.act, self.input_scale)(x) + confinement(x, self.base_std)


class Generator(nn.Module):
  """`z -> x = G(z)`, and a learnable noise scale for the noisy generator.

  `sigma()` lies in `[sigma_min, sigma_max]` by a sigmoid, so the clamp is smooth and the
  conditional entropy `(D/2) log(2πe σ²)` stays finite. The noise itself is added by the
  caller, so the same module serves the manifold (σ = 0) and the noisy generator.
  """
  hidden: Sequence[int] = (100, 100)
  out: int = 2
  act: str = "silu"
  sigma_min: float = 0.01
  sigma_max: float = 0.5
  sigma_init: float = 0.1
  input_scale: float = 1.0

  def setup(self):
    self.net = MLP(self.hidden, self.out, self.act, self.input_scale)
    logit = sigma_logit(self.sigma_min, self.sigma_max, self.sigma_init)
    self.sigma_logit = self.param("sigma_logit", lambda _: jnp.asarray(logit, jnp.float32))

  def __call__(self, z):
    return self.net(z)

  def sigma(self):
    return clamped_sigma(self.sigma_logit, self.sigma_min, self.sigma_max)


class Critic(nn.Module):
  """`T(x, z)`: a scalar MI critic on the concatenated pair."""
  hidden: Sequence[int] = (100, 100)
  act: str = "silu"

  @nn.compact
  def __call__(self, x, z):
    return MLP(self.hidden, 1, self.act)(jnp.concatenate([x, z], axis=-1))


# softplus⁻¹(1): a fresh encoder's std is about 1, so r(z | x) starts near the prior N(0, I) and the
# Barber–Agakov bound near 0, as a fresh critic's.
_UNIT_STD_OFFSET = math.log(math.e - 1.0)


def diagonal_gaussian_log_density(outputs, z, min_std):
  """`log N(z; μ, diag s²)` from `outputs [..., 2d] = (μ, raw)`, `s = min_std + softplus(raw + offset)`:
  smooth and positive, with a floor that keeps `log r` finite where the posterior is sharp."""
  mean, raw = jnp.split(outputs, 2, axis=-1)
  std = min_std + jax.nn.softplus(raw + _UNIT_STD_OFFSET)
  return jnp.sum(-0.5 * jnp.square((z - mean) / std) - jnp.log(std) - 0.5 * math.log(2 * math.pi), axis=-1)


class GaussianEncoder(nn.Module):
  """`log r(z | x)` for the Barber–Agakov bound: `r = N(μ(x), diag s(x)²)` from an MLP on x.

  Called as a critic, `(x, z) -> scalar`; d is read from z, so one module serves any latent size.
  """
  hidden: Sequence[int] = (100, 100)
  act: str = "silu"
  min_std: float = 1e-4

  @nn.compact
  def __call__(self, x, z):
    return diagonal_gaussian_log_density(MLP(self.hidden, 2 * z.shape[-1], self.act)(x), z, self.min_std)


class TimeEnergy(nn.Module):
  """`E(x, t)`, t ∈ [0, 1]: time enters through Fourier features; `E(·, 0)` is the EBM."""
  hidden: Sequence[int] = (100, 100)
  act: str = "silu"
  num_frequencies: int = 8
  base_std: float = 5.0
  input_scale: float = 1.0

  @nn.compact
  def __call__(self, x, t):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])[..., None]
    freqs = jnp.pi * 2.0 ** jnp.arange(self.num_frequencies, dtype=x.dtype)
    features = jnp.concatenate([x * self.input_scale, t, jnp.sin(freqs * t), jnp.cos(freqs * t)], axis=-1)
    return MLP(self.hidden, 1, self.act)(features) + confinement(x, self.base_std)
