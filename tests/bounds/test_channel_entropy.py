"""Both sides of a Gaussian channel's output entropy against the linear-Gaussian closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import bounds


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.5])
def test_channel_bounds_sandwich_the_entropy_of_a_linear_gaussian_channel(sigma, x64):
  """x = A z + σ ε has H(x) = ½ log det(2πe (AAᵀ + σ²I)); the leave-one-out mean lies above it,
  the InfoNCE-style mean below it and below H(x|z) + log B, at batch 200."""
  a = jnp.array([[1.0, 0.4], [-0.3, 0.8]])
  batch, dim = 200, 2
  entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * (a @ a.T + sigma**2 * np.eye(dim)))[1]

  def one(key):
    z_key, e_key = jax.random.split(key)
    z = jax.random.normal(z_key, (batch, dim))
    means = z @ a.T
    lower, upper = bounds.gaussian_channel_entropy_bounds(means + sigma * jax.random.normal(e_key, means.shape),
                                                          means, sigma)
    return jnp.mean(lower), jnp.mean(upper)
  lower, upper = (np.asarray(v) for v in jax.vmap(one)(jax.random.split(jax.random.PRNGKey(0), 400)))
  stderr = lambda v: v.std() / math.sqrt(v.size)
  assert lower.mean() < entropy + 3 * stderr(lower) and upper.mean() > entropy - 3 * stderr(upper)
  assert lower.mean() <= dim / 2 * math.log(2 * math.pi * math.e * sigma**2) + math.log(batch) + 1e-9
  if sigma == 0.5:  # a wide channel: both sides close
    assert upper.mean() - lower.mean() < 0.1
