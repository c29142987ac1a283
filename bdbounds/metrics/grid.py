"""Conventions shared by the 2-D grid metrics: energy functions, boxes and cell centres.

``energy_fn`` maps an array of points ``[N, 2]`` to energies ``[N]`` (an output
of shape ``[N, 1]`` is accepted) and must be traceable by JAX.  A box is
``[lo[0], hi[0]] x [lo[1], hi[1]]``; a grid of ``resolution x resolution``
cells has its quadrature nodes at the cell centres.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EnergyFn", "as_partial", "as_vector", "cell_centres", "float_dtype", "parse_box"]

EnergyFn = Callable[[jax.Array], jax.Array]


def float_dtype():
  """The default JAX float dtype: float32, or float64 under ``jax_enable_x64``."""
  return jnp.zeros(()).dtype


def as_partial(fn: EnergyFn) -> jax.tree_util.Partial:
  """`fn` as a `jax.tree_util.Partial`, which jitted functions take as an argument: its function
  is static (a new function compiles anew) and the arguments bound in it (a model's parameters)
  are traced, so `Partial(energy, params)` compiles once for every `params` of that model."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def as_vector(values: jax.Array, n: int) -> jax.Array:
  """``values`` of an energy or log-density function on ``n`` points as shape ``[n]``.

  Accepts any shape with ``n`` elements (e.g. ``[n, 1]``) and raises otherwise,
  so a function returning one value per coordinate is caught rather than broadcast.
  """
  values = jnp.asarray(values)
  if values.shape != (n,):
    if values.size != n:
      raise ValueError(
        f"energy/log-density function returned shape {values.shape} "
        f"for {n} points; expected ({n},) or ({n}, 1)"
      )
    values = values.reshape(n)
  return values


def parse_box(lo: Sequence[float], hi: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """Corners ``lo``, ``hi`` (scalars, the same for both axes, or pairs) as float64 ``[2]`` arrays.

  Raises ``ValueError`` unless both are finite with ``lo < hi`` on each axis.
  """
  lo_a = np.asarray(lo, dtype=np.float64).reshape(-1)
  hi_a = np.asarray(hi, dtype=np.float64).reshape(-1)
  if lo_a.shape == (1,):
    lo_a = np.repeat(lo_a, 2)
  if hi_a.shape == (1,):
    hi_a = np.repeat(hi_a, 2)
  if lo_a.shape != (2,) or hi_a.shape != (2,):
    raise ValueError(f"lo and hi must be scalars or pairs, got {lo!r}, {hi!r}")
  if not (np.all(np.isfinite(lo_a)) and np.all(np.isfinite(hi_a)) and np.all(hi_a > lo_a)):
    raise ValueError(f"need finite lo < hi, got lo={lo!r}, hi={hi!r}")
  return lo_a, hi_a


def cell_centres(lo: float, hi: float, resolution: int) -> np.ndarray:
  """The ``resolution`` cell centres of ``[lo, hi]`` along one axis, float64."""
  h = (hi - lo) / resolution
  return lo + (np.arange(resolution, dtype=np.float64) + 0.5) * h
