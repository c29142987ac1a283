"""Bits per dimension of discrete images from a continuous density.

Images stored with `L` evenly spaced levels over [-1, 1] have bins of width `w = 2/(L − 1)`
around each level. For a density p on the continuous values and uniform dequantisation noise
`u ~ U(−w/2, w/2)^D`, Jensen's inequality gives the probability of the discrete image

    −log P(x) = −log ∫_bin p(y) dy ≤ E_u[−log p(x + u)] − D log w,

so any upper bound on `−log p(x + u)` (the diffusion bound) plus `D log(1/w)` bounds the
discrete NLL. For 8-bit images `−log w = log 127.5`, the usual offset of bits/dim reports.
"""

import math

import jax
import jax.numpy as jnp


def bin_width(num_levels: int) -> float:
  """Width of one intensity bin of data with `num_levels` levels spread evenly over [-1, 1]."""
  if num_levels < 2:
    raise ValueError(f"num_levels must be at least 2; got {num_levels}")
  return 2.0 / (num_levels - 1)


def dequantize(x: jax.Array, width: float, *, key) -> jax.Array:
  """`x + u`, `u ~ U(−width/2, width/2)` independently per value."""
  return x + width * (jax.random.uniform(key, x.shape, x.dtype) - 0.5)


def bits_per_dim(nll_nats, num_dims: int, width: float | None = None):
  """Nats of a continuous NLL (of dequantised data) → bits/dim of the discrete data.

  `width=None` converts the continuous NLL as it is (no discretisation offset).
  """
  offset = 0.0 if width is None else -num_dims * math.log(width)
  return (jnp.asarray(nll_nats) + offset) / (num_dims * math.log(2.0))
