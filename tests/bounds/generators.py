"""Small generators with closed-over parameters, shared by the bound tests."""

import jax
import jax.numpy as jnp


def init_mlp(key, sizes, dtype=jnp.float64):
  keys = jax.random.split(key, len(sizes) - 1)
  return [(jax.random.normal(k, (n_out, n_in), dtype) / jnp.sqrt(n_in), 0.1 * jnp.ones(n_out, dtype))
          for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params):
  def fn(z):
    h = z
    for i, (w, b) in enumerate(params):
      h = w @ h + b
      if i < len(params) - 1:
        h = jnp.tanh(h)
    return h
  return fn


def init_conv(key, latent_dim=8, dtype=jnp.float64):
  k1, k2 = jax.random.split(key)
  return {"dense": jax.random.normal(k1, (4 * 4 * 4, latent_dim), dtype) / jnp.sqrt(latent_dim),
          "conv": jax.random.normal(k2, (3, 3, 4, 3), dtype) / 6.0}


def conv_generator(params):
  """z [d] -> image [8, 8, 3]: dense, nearest 2× upsampling, 3×3 convolution, tanh."""
  def fn(z):
    h = jnp.tanh(params["dense"] @ z).reshape(1, 4, 4, 4)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    h = jax.lax.conv_general_dilated(h, params["conv"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(h[0])
  return fn
