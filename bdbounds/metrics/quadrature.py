"""Grid quadrature for 2-D energy-based models: the log partition function ``log Z``.

For a 2-D density ``p(x) = exp(-E(x)) / Z`` the partition function can be
computed to high accuracy by a midpoint rule on a regular grid, which turns
test NLL ``E_data[E(x)] + log Z`` and ``KL(p_data || p)`` into exact (up to a
stated quadrature error) numbers rather than bounds (see
:mod:`bdbounds.metrics.density` for those, given ``log Z``).

The midpoint rule on a smooth, rapidly decaying integrand converges very fast
once the cell size ``h`` is below the width ``s`` of the narrowest feature:
for a Gaussian mode the relative aliasing error behaves like
``exp(-2 pi^2 s^2 / h^2)`` per axis, so halving ``h`` raises the error to the
fourth power.  :func:`adaptive_log_partition` exploits this: it grows the box
until the probability mass near its boundary is negligible, then doubles the
resolution until two successive estimates of ``log Z`` agree to ``tol``, and
reports the final grid together with an error estimate.  If it runs out of
resolution or box growth it says so (``converged=False``).

Energies are evaluated in fixed-size chunks under ``jax.jit`` so memory stays
bounded at any resolution; within a chunk the sum runs in the energy's dtype
(float32 by default), and chunks are combined in float64 on the host.

Conventions (energy functions, boxes, cell centres) are those of
:mod:`bdbounds.metrics.grid`.  Everything is in nats.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds.metrics.grid import EnergyFn, as_partial, as_vector, float_dtype, parse_box

__all__ = [
  "GridLogZ",
  "adaptive_log_partition",
  "log_partition_on_grid",
]

# Number of groups reduced by the grid kernel: the whole grid, then the outer
# and the next-inner boundary strip of each side (x-low, x-high, y-low, y-high).
_N_GROUPS = 9
_TOTAL = 0
_OUTER = slice(1, 5)
_INNER = slice(5, 9)
_SUM_BLOCK = 256  # inner block of the two-level (blocked) in-chunk summation


class GridLogZ(NamedTuple):
  """Result of :func:`adaptive_log_partition`.

  Attributes:
   log_z: ``log`` of the midpoint-rule integral of ``exp(-E)`` over the
    final box at the final resolution.
   error_estimate: ``|log_z - log_z at half the resolution|`` plus the
    estimated relative probability mass outside the box (``tail_mass``).
    ``inf`` when fewer than two resolutions were evaluated on the final
    box or the tails could not be bounded.
   lo, hi: corners of the final box.
   resolution: the final grid has ``resolution x resolution`` cells.
   converged: ``error_estimate < tol`` was reached within the resolution and
    box-growth budgets.  ``False`` means the numbers are not to be trusted
    to ``tol``.
   tail_mass: estimated mass outside the box relative to the mass inside,
    extrapolated from the two outermost strips of cells on each side
    (geometric decay; conservative for Gaussian-like or lighter tails,
    an underestimate for power-law tails).
   history: ``(resolution, log_z)`` for every resolution evaluated on the
    final box, coarse to fine.
  """

  log_z: float
  error_estimate: float
  lo: tuple[float, float]
  hi: tuple[float, float]
  resolution: int
  converged: bool
  tail_mass: float
  history: tuple[tuple[int, float], ...]


class _GridStats(NamedTuple):
  log_z: float  # log of the midpoint integral over the box
  tail_mass: float  # estimated outside mass / inside mass, all four sides
  side_tails: np.ndarray  # [4] the same per side: x-low, x-high, y-low, y-high


# ---------------------------------------------------------------------------
# Midpoint rule on a grid


def _round_chunk(chunk_size: int) -> int:
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  return _SUM_BLOCK * max(1, -(-int(chunk_size) // _SUM_BLOCK))


def _make_grid_kernel(energy_fn: EnergyFn, chunk: int):
  """Jitted kernel: for the cells ``start .. start+chunk-1`` of a grid, returns
  ``(m, s)`` with ``m`` the chunk maximum of ``-E`` and ``s[g]`` the sum of
  ``exp(-E - m)`` over the cells of group ``g`` (see ``_N_GROUPS``).

  Grid geometry is passed as traced arguments, so one compilation serves
  every resolution and box; so is an energy given as ``jax.tree_util.Partial``
  (its function fixed, its parameters traced), so one compilation also serves
  every state of a model.
  """
  return functools.partial(_grid_kernel, as_partial(energy_fn), chunk=chunk)


@functools.partial(jax.jit, static_argnames="chunk")
def _grid_kernel(energy_fn, start, lo, h, res, k, *, chunk: int):
  dtype = lo.dtype
  idx = start + jnp.arange(chunk, dtype=jnp.int32)
  valid = idx < res * res
  i = idx // res  # x index
  j = idx % res  # y index
  pts = jnp.stack(
    [lo[0] + (i.astype(dtype) + 0.5) * h[0], lo[1] + (j.astype(dtype) + 0.5) * h[1]],
    axis=-1,
  )
  neg_e = -as_vector(energy_fn(pts), chunk)
  neg_e = jnp.where(valid, neg_e, -jnp.inf)
  m = jnp.max(neg_e)
  m_shift = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
  w = jnp.exp(neg_e - m_shift)
  masks = jnp.stack(
    [
      valid,
      valid & (i < k),
      valid & (i >= res - k),
      valid & (j < k),
      valid & (j >= res - k),
      (i >= k) & (i < 2 * k),
      (i < res - k) & (i >= res - 2 * k),
      (j >= k) & (j < 2 * k),
      (j < res - k) & (j >= res - 2 * k),
    ]
  )
  terms = jnp.where(masks, w[None, :], jnp.zeros_like(w)[None, :])
  # Blocked summation keeps float32 round-off at ~eps*sqrt(chunk) or better.
  s = terms.reshape(_N_GROUPS, chunk // _SUM_BLOCK, _SUM_BLOCK).sum(-1).sum(-1)
  return m, s


def _strip_cells(resolution: int, band: float) -> int:
  return int(min(max(1, round(band * resolution)), max(1, resolution // 4)))


def _tail_estimate(outer: float, inner: float) -> float:
  """Mass beyond a side, relative to the total, from the two outermost strips.

  Assumes the strip masses keep decaying geometrically with ratio
  ``q = outer / inner`` beyond the box: ``outer * q / (1 - q)``.
  """
  if not outer > 0.0:
    return 0.0 if outer == 0.0 else math.inf  # nan -> inf
  if not inner > outer:
    return math.inf
  q = outer / inner
  return outer * q / (1.0 - q)


def _grid_stats(
  kernel, chunk: int, lo: np.ndarray, hi: np.ndarray, resolution: int, band: float
) -> _GridStats:
  resolution = int(resolution)
  if resolution < 1:
    raise ValueError(f"resolution must be positive, got {resolution}")
  if resolution * resolution >= 2**31 - chunk:
    raise ValueError(f"resolution {resolution} too large for int32 cell indices")
  dtype = float_dtype()
  h = (hi - lo) / resolution
  lo_j = jnp.asarray(lo, dtype=dtype)
  h_j = jnp.asarray(h, dtype=dtype)
  res_j = jnp.asarray(resolution, dtype=jnp.int32)
  k_j = jnp.asarray(_strip_cells(resolution, band), dtype=jnp.int32)
  ms, ss = [], []
  for start in range(0, resolution * resolution, chunk):
    m, s = kernel(jnp.asarray(start, dtype=jnp.int32), lo_j, h_j, res_j, k_j)
    ms.append(m)
    ss.append(s)
  m = np.asarray(jnp.stack(ms), dtype=np.float64)  # [C]
  s = np.asarray(jnp.stack(ss), dtype=np.float64)  # [C, G]
  with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
    if np.any(np.isnan(m)) or np.any(np.isnan(s)):
      return _GridStats(math.nan, math.inf, np.full(4, math.inf))
    big = np.max(m)
    if big == math.inf:
      return _GridStats(math.inf, math.inf, np.full(4, math.inf))
    if big == -math.inf:  # exp(-E) underflows to 0 everywhere
      return _GridStats(-math.inf, math.inf, np.full(4, math.inf))
    weights = np.exp(m - big)  # [C]
    group = (s * weights[:, None]).sum(0)  # [G], relative to exp(big)
    total = group[_TOTAL]
    log_z = float(big + np.log(total) + np.log(h[0] * h[1]))
    outer = group[_OUTER] / total
    inner = group[_INNER] / total
  side_tails = np.array([_tail_estimate(o, i) for o, i in zip(outer, inner)])
  return _GridStats(log_z, float(np.sum(side_tails)), side_tails)


def log_partition_on_grid(
  energy_fn: EnergyFn,
  lo: Sequence[float],
  hi: Sequence[float],
  resolution: int,
  *,
  chunk_size: int = 65536,
) -> float:
  """``log`` of the midpoint-rule integral of ``exp(-E)`` over a box.

  ``log Z ~= logsumexp_cells(-E(cell centre)) + log(cell area)`` with
  ``resolution x resolution`` cells on ``[lo[0], hi[0]] x [lo[1], hi[1]]``.
  ``lo``/``hi`` may be scalars (same for both axes).  Energies are computed
  ``chunk_size`` points at a time under ``jax.jit``.  No error estimate: see
  :func:`adaptive_log_partition` for that.
  """
  lo_a, hi_a = parse_box(lo, hi)
  chunk = _round_chunk(min(chunk_size, int(resolution) ** 2))
  kernel = _make_grid_kernel(energy_fn, chunk)
  return _grid_stats(kernel, chunk, lo_a, hi_a, resolution, band=0.05).log_z


def _initial_box(data, lo, hi, margin: float) -> tuple[np.ndarray, np.ndarray]:
  if lo is not None or hi is not None:
    if lo is None or hi is None:
      raise ValueError("give both lo and hi, or neither")
    return parse_box(lo, hi)
  if data is None:
    raise ValueError("need data (to size the initial box) or an explicit lo/hi")
  data = np.asarray(data, dtype=np.float64)
  if data.ndim != 2 or data.shape[1] != 2 or data.shape[0] == 0:
    raise ValueError(f"data must have shape [N, 2] with N > 0, got {data.shape}")
  if not np.all(np.isfinite(data)):
    raise ValueError("data contains non-finite values")
  d_lo, d_hi = data.min(0), data.max(0)
  # Pad both axes by the same amount, relative to the larger extent (at least
  # 1), so a degenerate axis still gets a sensible box.
  pad = margin * max(float(np.max(d_hi - d_lo)), 1.0)
  return d_lo - pad, d_hi + pad


def adaptive_log_partition(
  energy_fn: EnergyFn,
  data=None,
  *,
  lo: Optional[Sequence[float]] = None,
  hi: Optional[Sequence[float]] = None,
  tol: float = 1e-3,
  tail_tol: Optional[float] = None,
  margin: float = 0.25,
  initial_resolution: int = 64,
  max_resolution: int = 2048,
  band: float = 0.05,
  growth: float = 0.5,
  max_growths: int = 12,
  chunk_size: int = 65536,
) -> GridLogZ:
  """``log Z = log ∫ exp(-E)`` by a midpoint rule whose box and resolution adapt.

  1. Box: the bounding box of ``data`` ([N, 2]) padded on every side by
    ``margin`` times its larger extent (or the explicit ``lo``/``hi``).
  2. At each resolution the mass outside the box is estimated from the two
    outermost strips of cells on each side (each ``band`` of the box wide):
    if the outer strip's mass is not below the inner one's, or the geometric
    extrapolation of the decay exceeds ``tail_tol / 4`` relative mass, that
    side is moved out by ``growth`` times the box width and the refinement
    restarts from ``initial_resolution`` on the new box.
  3. Otherwise the resolution is doubled until successive estimates of
    ``log Z`` differ by ``diff`` with ``diff + tail_mass < tol``.

  ``converged`` is ``False`` (and ``error_estimate`` is whatever was reached,
  possibly ``inf``) when ``max_resolution`` or ``max_growths`` is exhausted
  first, or the energy is not finite on the grid.  Because the midpoint rule
  converges faster than geometrically for smooth energies, the difference
  between successive resolutions overestimates the error of the finer one;
  the test can in principle be fooled if both grids are far coarser than the
  narrowest mode, so ``initial_resolution`` should not be tiny.  Mass is
  only found if it is connected to the box: an isolated spurious mode far
  outside it, behind a region of negligible density at the box edge, is
  missed (a larger ``margin`` or explicit ``lo``/``hi`` guards against that).

  Args:
   energy_fn: JAX-traceable ``[N, 2] -> [N]`` energy.
   data: samples used to place the initial box.
   lo, hi: explicit initial box instead of ``data``.
   tol: target for ``error_estimate`` (nats).
   tail_tol: acceptable estimated outside mass (relative); default ``tol/10``.
   margin: padding of the data box, as a fraction of its larger extent.
   initial_resolution: cells per axis of the first (coarsest) grid.
   max_resolution: largest cells per axis that may be evaluated.
   band: width of each boundary strip as a fraction of the box width.
   growth: a growing side moves out by this fraction of the box width.
   max_growths: cap on box growth steps (a non-normalisable energy stops here).
   chunk_size: energies evaluated per jitted call.

  Returns:
   A :class:`GridLogZ`.
  """
  if not tol > 0:
    raise ValueError(f"tol must be positive, got {tol}")
  tail_tol = tol / 10.0 if tail_tol is None else float(tail_tol)
  if not 0 < tail_tol < tol:
    raise ValueError(f"need 0 < tail_tol < tol, got tail_tol={tail_tol}, tol={tol}")
  if initial_resolution < 8 or max_resolution < 8:
    raise ValueError("initial_resolution and max_resolution must be at least 8")
  box_lo, box_hi = _initial_box(data, lo, hi, margin)
  res0 = min(int(initial_resolution), int(max_resolution))
  chunk = _round_chunk(min(chunk_size, int(max_resolution) ** 2))
  kernel = _make_grid_kernel(energy_fn, chunk)

  res = res0
  growths = 0
  history: list[tuple[int, float]] = []

  def result(stats: _GridStats, converged: bool) -> GridLogZ:
    if len(history) >= 2:
      err = abs(history[-1][1] - history[-2][1]) + stats.tail_mass
    else:
      err = math.inf
    if not math.isfinite(stats.log_z):
      err, converged = math.inf, False
    return GridLogZ(
      log_z=stats.log_z,
      error_estimate=float(err),
      lo=(float(box_lo[0]), float(box_lo[1])),
      hi=(float(box_hi[0]), float(box_hi[1])),
      resolution=res,
      converged=bool(converged and err < tol),
      tail_mass=float(stats.tail_mass),
      history=tuple(history),
    )

  while True:
    stats = _grid_stats(kernel, chunk, box_lo, box_hi, res, band)
    if not math.isfinite(stats.log_z):
      history.append((res, stats.log_z))
      return result(stats, converged=False)
    grow = stats.side_tails > tail_tol / 4.0
    if np.any(grow):
      if growths >= max_growths:
        history.append((res, stats.log_z))
        return result(stats, converged=False)
      width = box_hi - box_lo
      box_lo = box_lo - growth * width * grow[[0, 2]]
      box_hi = box_hi + growth * width * grow[[1, 3]]
      growths += 1
      res = res0
      history = []
      continue
    history.append((res, stats.log_z))
    if len(history) >= 2:
      diff = abs(history[-1][1] - history[-2][1])
      if diff + stats.tail_mass < tol:
        return result(stats, converged=True)
    if 2 * res > max_resolution:
      return result(stats, converged=False)
    res *= 2
