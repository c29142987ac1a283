"""Pieces every model family shares: the Gaussian confinement term and the σ clamp."""

import math

import jax
import jax.numpy as jnp


def confinement(x, base_std, event_ndim=1):
  """`‖x‖² / (2 s²)` over the last `event_ndim` axes: the energy of the base `N(0, s² I)`."""
  return 0.5 * jnp.sum(jnp.square(x), axis=tuple(range(-event_ndim, 0))) / base_std**2


def sigma_logit(sigma_min, sigma_max, sigma_init):
  """Initial logit of the noise scale, so that `clamped_sigma(logit, ...) = sigma_init`."""
  frac = (sigma_init - sigma_min) / (sigma_max - sigma_min)
  if not 0.0 < frac < 1.0:
    raise ValueError(f"sigma_init={sigma_init} must lie strictly inside "
                     f"(sigma_min={sigma_min}, sigma_max={sigma_max})")
  return math.log(frac) - math.log1p(-frac)


def clamped_sigma(logit, sigma_min, sigma_max):
  """`σ ∈ [sigma_min, sigma_max]` by a sigmoid: the clamp is smooth and never cuts a gradient."""
  return sigma_min + (sigma_max - sigma_min) * jax.nn.sigmoid(logit)
