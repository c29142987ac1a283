"""Normalised densities, exact NLL and KL of 2-D energy-based models, given ``log Z``.

With ``log Z`` from :func:`bdbounds.metrics.adaptive_log_partition` the model
density ``p(x) = exp(-E(x) - log Z)`` is known pointwise, so the test NLL is a
sample mean and ``KL(p_data || p)`` a midpoint rule on the same grid (or a
Monte-Carlo mean, as a cross-check).  Energies are evaluated in fixed-size
chunks under ``jax.jit``; sums run in float64 on the host.

Conventions (energy functions, boxes, cell centres) are those of
:mod:`bdbounds.metrics.grid`.  Everything is in nats.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds.metrics.grid import EnergyFn, as_partial, as_vector, cell_centres, float_dtype, parse_box

__all__ = [
  "MonteCarloEstimate",
  "density_on_grid",
  "kl_data_model",
  "kl_data_model_mc",
  "log_density_fn",
  "nll",
]


class MonteCarloEstimate(NamedTuple):
  """A sample mean and its standard error (``std / sqrt(n)``)."""

  value: float
  stderr: float


# ---------------------------------------------------------------------------
# Chunked evaluation on points and grids


def _map_chunks(
  fn: Callable[[jax.Array], jax.Array], points: np.ndarray, chunk_size: int, *, pad: bool = False
) -> np.ndarray:
  """Applies a jitted ``[chunk, 2] -> [chunk]`` function to ``points`` in fixed-size chunks.

  Chunks hold ``min(chunk_size, N)`` points (exactly ``chunk_size`` when
  ``pad``); a short last chunk is padded with copies of its first point so
  only one shape is compiled.  Returns float64 numpy values of shape ``[N]``.
  """
  points = np.asarray(points)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"expected points of shape [N, 2], got {points.shape}")
  n = points.shape[0]
  if n == 0:
    return np.zeros((0,), dtype=np.float64)
  chunk = int(chunk_size) if pad else min(int(chunk_size), n)
  dtype = float_dtype()
  out = np.empty((n,), dtype=np.float64)
  for start in range(0, n, chunk):
    block = points[start : start + chunk]
    m = block.shape[0]
    if m < chunk:
      block = np.concatenate([block, np.repeat(block[:1], chunk - m, axis=0)], axis=0)
    vals = fn(jnp.asarray(block, dtype=dtype))
    out[start : start + m] = np.asarray(as_vector(vals, chunk), dtype=np.float64)[:m]
  return out


def _jit_vector_fn(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  return functools.partial(_vector, as_partial(fn))


@jax.jit
def _vector(fn, x):  # `fn` a Partial: one compilation per model, whatever its parameters
  return as_vector(fn(x), x.shape[0])


def _vector_fn(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  # Data log-densities are called eagerly (they may be numpy/scipy code).
  return lambda x: as_vector(fn(x), x.shape[0])


def _grid_points(lo: np.ndarray, hi: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  xs = cell_centres(lo[0], hi[0], resolution)
  ys = cell_centres(lo[1], hi[1], resolution)
  return xs, ys


def _iter_grid_rows(xs: np.ndarray, ys: np.ndarray, chunk_size: int):
  """Yields ``(row_slice, points)`` covering the grid in y-major order, whole rows at a time."""
  rows_per_chunk = max(1, int(chunk_size) // xs.shape[0])
  for r0 in range(0, ys.shape[0], rows_per_chunk):
    yy = ys[r0 : r0 + rows_per_chunk]
    gx, gy = np.meshgrid(xs, yy, indexing="xy")  # [rows, res_x]
    yield slice(r0, r0 + yy.shape[0]), np.stack([gx.ravel(), gy.ravel()], axis=-1)


def _model_log_density_rows(energy_fn, log_z, lo, hi, resolution, chunk_size):
  """Yields ``(row_slice, points, log p_model, chunk)`` over the grid's cell centres, row blocks at a time."""
  xs, ys = _grid_points(lo, hi, resolution)
  rows_chunk = min(max(1, int(chunk_size) // resolution), resolution) * resolution
  energy = _jit_vector_fn(energy_fn)
  for rows, pts in _iter_grid_rows(xs, ys, chunk_size):
    yield rows, pts, -_map_chunks(energy, pts, rows_chunk, pad=True) - float(log_z), rows_chunk


# ---------------------------------------------------------------------------
# Densities, NLL, KL


def log_density_fn(energy_fn: EnergyFn, log_z: float) -> Callable[[jax.Array], jax.Array]:
  """``x -> -E(x) - log_z``: the normalised log density ``log p(x)`` ([N, 2] -> [N])."""
  log_z = float(log_z)

  def log_prob(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return -as_vector(energy_fn(x), x.shape[0]) - log_z

  return log_prob


def nll(energy_fn: EnergyFn, x, log_z: float, *, chunk_size: int = 65536) -> float:
  """Mean negative log-likelihood ``mean_i E(x_i) + log_z`` (nats per point).

  The Monte-Carlo standard error is ``std_i E(x_i) / sqrt(N)`` (``log_z``
  is a constant); see :func:`kl_data_model_mc` for an estimator that reports it.
  """
  energies = _map_chunks(_jit_vector_fn(energy_fn), np.asarray(x), chunk_size)
  return float(np.mean(energies) + float(log_z))


def kl_data_model_mc(
  data_log_prob: Callable[[jax.Array], jax.Array],
  energy_fn: EnergyFn,
  log_z: float,
  samples,
  *,
  chunk_size: int = 65536,
) -> MonteCarloEstimate:
  """Monte-Carlo ``KL(p_data || p_model) = E_{x~p_data}[log p_data(x) + E(x)] + log_z``.

  ``samples`` must be drawn from ``p_data`` ([N, 2]).  Useful as a cross-check
  of :func:`kl_data_model` (and when ``p_data`` is only known up to samples,
  ``nll`` gives the cross-entropy part).  Returns the mean and its standard error.
  """
  samples = np.asarray(samples)
  energies = _map_chunks(_jit_vector_fn(energy_fn), samples, chunk_size)
  log_p_data = _map_chunks(_vector_fn(data_log_prob), samples, chunk_size)
  terms = log_p_data + energies + float(log_z)
  n = terms.shape[0]
  stderr = float(np.std(terms, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
  return MonteCarloEstimate(float(np.mean(terms)), stderr)


def kl_data_model(
  data_log_prob: Callable[[jax.Array], jax.Array],
  energy_fn: EnergyFn,
  log_z: float,
  lo: Sequence[float],
  hi: Sequence[float],
  resolution: int,
  *,
  chunk_size: int = 65536,
  mass_tol: float = 1e-2,
) -> float:
  """``KL(p_data || p_model)`` by the midpoint rule on a grid.

  ``∫ p_data(x) [log p_data(x) + E(x) + log_z] dx`` over ``resolution x
  resolution`` cells of ``[lo, hi]``.  ``data_log_prob`` ([N, 2] -> [N]) is
  the normalised data log-density and may be ``-inf`` outside its support;
  such cells contribute 0 (``0 log 0 = 0``).  It is called eagerly on
  ``[chunk, 2]`` arrays, so pass a jitted function when it is JAX code and
  speed matters.  Where ``p_data > 0`` but the model density is 0 the result
  is ``inf``.  Warns if the grid mass of ``p_data`` differs from 1 by more
  than ``mass_tol`` (box too small or grid too coarse for ``p_data``).

  Use the box/resolution of :func:`bdbounds.metrics.adaptive_log_partition` (or finer) and
  cross-check with :func:`kl_data_model_mc`.
  """
  lo_a, hi_a = parse_box(lo, hi)
  resolution = int(resolution)
  cell = (hi_a[0] - lo_a[0]) * (hi_a[1] - lo_a[1]) / resolution**2
  data_fn = _vector_fn(data_log_prob)
  total, mass = 0.0, 0.0
  for _, pts, lp_model, rows_chunk in _model_log_density_rows(energy_fn, log_z, lo_a, hi_a, resolution, chunk_size):
    lp_data = _map_chunks(data_fn, pts, rows_chunk, pad=True)
    if np.any(np.isnan(lp_data)) or np.any(np.isnan(lp_model)):
      return math.nan
    support = lp_data > -np.inf
    p = np.exp(lp_data[support])
    with np.errstate(invalid="ignore"):
      total += float(np.sum(p * (lp_data[support] - lp_model[support])))
    mass += float(np.sum(p))
  mass *= cell
  if abs(mass - 1.0) > mass_tol:
    warnings.warn(
      f"p_data integrates to {mass:.4g} on the grid, not 1: "
      "enlarge the box or the resolution",
      RuntimeWarning,
      stacklevel=2,
    )
  return float(total * cell)


def density_on_grid(
  energy_fn: EnergyFn,
  log_z: float,
  lo: Sequence[float],
  hi: Sequence[float],
  resolution: int,
  *,
  chunk_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Normalised log density at the cell centres, for images.

  Returns ``(xs, ys, log_density)`` with ``xs``/``ys`` the ``[resolution]``
  cell centres along each axis and ``log_density[iy, ix] = log p(xs[ix],
  ys[iy])`` (rows are y), ready for
  ``plt.imshow(np.exp(log_density), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]))``
  or ``plt.pcolormesh(xs, ys, log_density)``.
  """
  lo_a, hi_a = parse_box(lo, hi)
  resolution = int(resolution)
  xs, ys = _grid_points(lo_a, hi_a, resolution)
  out = np.empty((resolution, resolution), dtype=np.float64)
  for rows, _, log_p, _ in _model_log_density_rows(energy_fn, log_z, lo_a, hi_a, resolution, chunk_size):
    out[rows] = log_p.reshape(-1, resolution)
  return xs, ys, out

