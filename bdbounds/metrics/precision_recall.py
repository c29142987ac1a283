"""Improved precision and recall of generative models on k-NN manifolds of features.

Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
Generative Models": each set's manifold is the union of balls reaching each
point's k-th nearest neighbour; precision is the fraction of generated points
inside the real manifold, recall the fraction of real points inside the
generated one.

Conventions: features are ``[N, F]`` arrays, one row per sample (see
:mod:`bdbounds.metrics.features`).  Pairwise distances run blocked in float32
under ``jax.jit``, so no full distance matrix is ever formed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds.metrics.features import as_features, check_same_dimension

__all__ = ["precision_recall_knn"]


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """``|a_i - b_j|^2`` as ``|a|^2 + |b|^2 - 2 a.b``, clipped at 0 (cancellation)."""
  # HIGHEST: the default float32 matmul may run in TF32 on GPUs, which would
  # blur distances at the ball boundaries.
  ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  a2 = jnp.sum(a * a, axis=1)
  b2 = jnp.sum(b * b, axis=1)
  return jnp.maximum(a2[:, None] + b2[None, :] - 2.0 * ab, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_nn_sq(rows, row_start, blocks, n, *, k: int):
  """Squared distance from each of ``rows`` to its k-th nearest neighbour in ``blocks``.

  ``rows`` are ``blocks`` rows ``row_start ..``; the point itself and the
  padding beyond ``n`` are excluded.  A running top-k over column blocks keeps
  memory at one ``[B, B]`` block.
  """
  size = blocks.shape[1]
  row_idx = row_start + jnp.arange(rows.shape[0])

  def body(best, inputs):
    cols, col_start = inputs
    col_idx = col_start + jnp.arange(size)
    d2 = _sq_dists(rows, cols)
    drop = (col_idx[None, :] >= n) | (col_idx[None, :] == row_idx[:, None])
    d2 = jnp.where(drop, jnp.inf, d2)
    neg, _ = jax.lax.top_k(-jnp.concatenate([best, d2], axis=1), k)
    return -neg, None

  best = jnp.full((rows.shape[0], k), jnp.inf, rows.dtype)
  starts = jnp.arange(blocks.shape[0]) * size
  best, _ = jax.lax.scan(body, best, (blocks, starts))
  return best[:, k - 1]


@jax.jit
def _inside_any(queries, blocks, radii_sq, n):
  """Whether each query lies in at least one ball ``|x - c_j|^2 <= r_j^2`` (``j < n``)."""
  size = blocks.shape[1]

  def body(inside, inputs):
    centres, r2, start = inputs
    valid = start + jnp.arange(size) < n
    hit = (_sq_dists(queries, centres) <= r2[None, :]) & valid[None, :]
    return inside | jnp.any(hit, axis=1), None

  inside = jnp.zeros((queries.shape[0],), dtype=bool)
  starts = jnp.arange(blocks.shape[0]) * size
  inside, _ = jax.lax.scan(body, inside, (blocks, radii_sq, starts))
  return inside


def _to_blocks(x: np.ndarray, size: int) -> jax.Array:
  """``[N, F] -> [ceil(N / size), size, F]`` float32, zero-padded (callers mask the padding)."""
  nb = -(-x.shape[0] // size)
  padded = np.zeros((nb * size, x.shape[1]), dtype=np.float32)
  padded[: x.shape[0]] = x
  return jnp.asarray(padded.reshape(nb, size, x.shape[1]))


def _knn_radii_sq(blocks: jax.Array, n: int, k: int) -> jax.Array:
  out = [
    _kth_nn_sq(rows, jnp.int32(i * blocks.shape[1]), blocks, jnp.int32(n), k=k)
    for i, rows in enumerate(blocks)
  ]
  return jnp.stack(out)  # [nb, size]; padding rows hold junk, masked by n downstream


def _coverage(queries: jax.Array, n_queries: int, centres: jax.Array, radii_sq, n: int) -> float:
  inside = [_inside_any(rows, centres, radii_sq, jnp.int32(n)) for rows in queries]
  inside = np.asarray(jnp.concatenate(inside))[:n_queries]
  return float(np.mean(inside))


def precision_recall_knn(
  real_features, fake_features, k: int = 3, batch_size: int = 2048
) -> tuple[float, float]:
  """Improved precision and recall of Kynkäänniemi et al. (2019).

  With ``r_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its
  own set (itself excluded), a set's manifold is ``U_x B(x, r_k(x))``:

   precision = fraction of fake points inside the real manifold,
   recall = fraction of real points inside the fake manifold.

  A point on a ball's boundary counts as inside.  Both are 1 when the two
  sets are the same points, and 0 when they are farther apart than every
  radius.  Distances are computed in ``[batch_size, batch_size]`` float32
  blocks under ``jax.jit``, after subtracting the real mean in float64 (the
  ``|a|^2 + |b|^2 - 2 a.b`` form loses accuracy far from the origin), so
  10k x 10k points of dimension 2048 never need a full distance matrix.

  Args:
   real_features: ``[N_real, F]`` reference features.
   fake_features: ``[N_fake, F]`` generated features.
   k: neighbourhood size (the paper uses 3); each set needs more than ``k`` points.
   batch_size: rows and columns per distance block.

  Returns:
   ``(precision, recall)`` as Python floats in ``[0, 1]``.
  """
  k = int(k)
  if k < 1:
    raise ValueError(f"k must be positive, got {k}")
  real = as_features(real_features, "real_features", min_rows=k + 1)
  fake = as_features(fake_features, "fake_features", min_rows=k + 1)
  check_same_dimension(real, fake)
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  shift = real.mean(axis=0, dtype=np.float64)
  n_real, n_fake = real.shape[0], fake.shape[0]
  size = int(min(batch_size, max(n_real, n_fake)))
  real_b = _to_blocks(real - shift, size)
  fake_b = _to_blocks(fake - shift, size)
  real_r2 = _knn_radii_sq(real_b, n_real, k)
  fake_r2 = _knn_radii_sq(fake_b, n_fake, k)
  precision = _coverage(fake_b, n_fake, real_b, real_r2, n_real)
  recall = _coverage(real_b, n_real, fake_b, fake_r2, n_fake)
  return precision, recall
