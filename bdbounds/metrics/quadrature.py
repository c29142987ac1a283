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

Two grids can agree and both be wrong: a spike much narrower than a cell (a
run-away energy at a data point) that falls between the nodes of every grid
is invisible to them, and no grid or shifted grid of affordable size finds a
point-like feature without knowing where to look.  Given ``probes`` (data,
test points, generator samples) the final grid is checked against ``-E`` at
each probe: a probe whose ``-E`` exceeds the grid's bilinear interpolation at
it by more than ``probe_margin`` marks mass the grid does not resolve, and the
cells around it are refined (a local quadtree) until the local integral is
known to the error budget (:func:`_refine_around_probes`), or the result says
it could not.  A randomly shifted grid at the final resolution is no help: a
spike of width ``s`` is hit by one of its nodes with probability about
``(6 s / h)**2`` (for the spike of the tests, 0 of 300 shifts found it).

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
_POINT_CHUNK = 4096  # points per jitted call when evaluating at scattered points (one compilation)
_PROBE_WINDOW = 8  # cells per axis refined around a probe at every level (even, >= 4)
# An unresolved bump of peak density exp(v) that the margin test flags is narrower than about
# a cell, so its mass is at most about pi * exp(v) * cell area (a Gaussian of std h/2 has
# (pi/2) exp(v) h^2, a cone exp(-r/s) with s < h/sqrt(2) has pi exp(v) h^2).
_UNRESOLVED_MASS_FACTOR = math.pi
# Cells are not split below this many ulps (at 1, or at the coordinate if larger): in float32 the
# rounding of coordinates and energies there is a noise that further splits only chase.
_MIN_CELL_ULPS = 16.0
_MAX_SPLIT_CELLS = 1 << 18  # cells split in one batch of the local refinement (4 energies each)


class GridLogZ(NamedTuple):
  """Result of :func:`adaptive_log_partition`.

  Attributes:
   log_z: ``log`` of the midpoint-rule integral of ``exp(-E)`` over the
    final box at the final resolution, refined around probes where the
    grid does not resolve the energy (``local_correction``).
   error_estimate: ``|log Z - log Z at half the resolution|`` of the plain
    grid plus the estimated relative probability mass outside the box
    (``tail_mass``) plus, with probes, the estimated error of the local
    refinement.  ``inf`` when fewer than two resolutions were evaluated on
    the final box or the tails could not be bounded.
   lo, hi: corners of the final box.
   resolution: the final grid has ``resolution x resolution`` cells.
   converged: ``error_estimate < tol`` was reached within the resolution,
    box-growth and refinement budgets, and nothing at the probes
    contradicts the grid.  ``False`` means the numbers are not to be
    trusted to ``tol``; ``reason`` says why.
   tail_mass: estimated mass outside the box relative to the mass inside,
    extrapolated from the two outermost strips of cells on each side
    (geometric decay; conservative for Gaussian-like or lighter tails,
    an underestimate for power-law tails).
   history: ``(resolution, log_z)`` for every resolution evaluated on the
    final box, coarse to fine: the plain grid, before any probe refinement.
   probe_max_neg_energy: max of ``-E`` over the probes (``-inf`` without probes).
   grid_max_neg_energy: max of ``-E`` over the nodes of the final grid.  A
    probe far above it is mass the grid has not seen.
   max_probe_excess: largest ``-E(probe)`` minus the final grid's bilinear
    interpolation of ``-E`` at it, over the probes inside the box (``-inf``
    without such probes).  Above ``probe_margin`` the probe was refined.
   refined_probes: number of probes around which the grid was refined.
   refined_cells: cells split by that refinement (each costs four energy
    evaluations): its cost.
   local_correction: ``log_z`` minus the plain grid's ``log Z`` (nats): what
    the local refinement added.
   reason: why ``converged`` is ``False`` (``""`` when it is ``True``).
  """

  log_z: float
  error_estimate: float
  lo: tuple[float, float]
  hi: tuple[float, float]
  resolution: int
  converged: bool
  tail_mass: float
  history: tuple[tuple[int, float], ...]
  # Defaults keep positional construction with the fields above working.
  probe_max_neg_energy: float = -math.inf
  grid_max_neg_energy: float = math.nan
  max_probe_excess: float = -math.inf
  refined_probes: int = 0
  refined_cells: int = 0
  local_correction: float = 0.0
  reason: str = ""


class _GridStats(NamedTuple):
  log_z: float  # log of the midpoint integral over the box
  tail_mass: float  # estimated outside mass / inside mass, all four sides
  side_tails: np.ndarray  # [4] the same per side: x-low, x-high, y-low, y-high
  max_neg_energy: float = math.nan  # max of -E over the nodes
  neg_energy_chunks: Optional[list] = None  # -E per chunk of cells (device arrays) when kept


class _LocalRefinement(NamedTuple):
  correction: float  # change of the integral, relative to the plain grid's Z
  interface: float  # the grid's estimated h^2 error at the edge of the refined cells (relative)
  interface_error: float  # the uncertainty of that estimate
  error: float  # estimated error of the refined integral, relative to the plain grid's Z
  cells_split: int  # cells split, over all levels (4 energies each)
  unresolved_probes: int  # probes still unresolved when refinement stopped
  unresolved_cells: int  # cells still to be split when refinement stopped
  finite: bool  # every energy evaluated was finite (or +inf)


# ---------------------------------------------------------------------------
# Midpoint rule on a grid


def _round_chunk(chunk_size: int) -> int:
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  return _SUM_BLOCK * max(1, -(-int(chunk_size) // _SUM_BLOCK))


def _make_grid_kernel(energy_fn: EnergyFn, chunk: int):
  """Jitted kernel: for the cells ``start .. start+chunk-1`` of a grid, returns
  ``(m, s, neg_e)`` with ``m`` the chunk maximum of ``-E``, ``s[g]`` the sum of
  ``exp(-E - m)`` over the cells of group ``g`` (see ``_N_GROUPS``) and
  ``neg_e`` the ``-E`` of each cell (``-inf`` past the last cell).

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
  return m, s, neg_e


@jax.jit
def _points_kernel(energy_fn, points):
  return -as_vector(energy_fn(points), points.shape[0])


def _neg_energy_at(energy_fn: jax.tree_util.Partial, points: np.ndarray) -> np.ndarray:
  """``-E`` at ``points`` ([N, 2], float64 on the host) as float64, ``_POINT_CHUNK`` at a time
  (the last chunk padded), so every call with any ``N`` shares one compilation."""
  points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
  n = points.shape[0]
  if n == 0:
    return np.zeros(0)
  dtype = float_dtype()
  padded = np.concatenate([points, np.repeat(points[-1:], -n % _POINT_CHUNK, axis=0)])
  out = [_points_kernel(energy_fn, jnp.asarray(padded[i : i + _POINT_CHUNK], dtype=dtype))
         for i in range(0, padded.shape[0], _POINT_CHUNK)]
  return np.asarray(jnp.concatenate(out), dtype=np.float64)[:n]


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
  kernel, chunk: int, lo: np.ndarray, hi: np.ndarray, resolution: int, band: float, keep_values: bool = False
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
  ms, ss, values = [], [], []
  for start in range(0, resolution * resolution, chunk):
    m, s, neg_e = kernel(jnp.asarray(start, dtype=jnp.int32), lo_j, h_j, res_j, k_j)
    ms.append(m)
    ss.append(s)
    if keep_values:
      values.append(neg_e)
  values = values if keep_values else None
  m = np.asarray(jnp.stack(ms), dtype=np.float64)  # [C]
  s = np.asarray(jnp.stack(ss), dtype=np.float64)  # [C, G]
  with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
    if np.any(np.isnan(m)) or np.any(np.isnan(s)):
      return _GridStats(math.nan, math.inf, np.full(4, math.inf), math.nan, values)
    big = np.max(m)
    if big == math.inf:
      return _GridStats(math.inf, math.inf, np.full(4, math.inf), math.inf, values)
    if big == -math.inf:  # exp(-E) underflows to 0 everywhere
      return _GridStats(-math.inf, math.inf, np.full(4, math.inf), -math.inf, values)
    weights = np.exp(m - big)  # [C]
    group = (s * weights[:, None]).sum(0)  # [G], relative to exp(big)
    total = group[_TOTAL]
    log_z = float(big + np.log(total) + np.log(h[0] * h[1]))
    outer = group[_OUTER] / total
    inner = group[_INNER] / total
  side_tails = np.array([_tail_estimate(o, i) for o, i in zip(outer, inner)])
  return _GridStats(log_z, float(np.sum(side_tails)), side_tails, float(big), values)


# ---------------------------------------------------------------------------
# Probes: mass the grid does not resolve

# The four nodes around a point, as offsets of the lower-left one: (0, 0), (0, 1), (1, 0), (1, 1).
_CORNERS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.int64)


class _ProbeCheck(NamedTuple):
  log_z: float  # the grid's log Z with the local corrections
  error: float  # estimated error of the local refinement (nats), to add to the grid's
  probe_max_neg_energy: float
  max_probe_excess: float
  refined: int
  cells: int  # cells split by the local refinement
  reasons: tuple[str, ...]  # why the result cannot be trusted; empty when it can


def _interpolate_corners(corner_values: np.ndarray, frac: np.ndarray) -> np.ndarray:
  """Bilinear interpolation from the values ``[P, 4]`` at the ``_CORNERS`` of each point's node
  square, ``frac`` ``[P, 2]`` being the point's position in it; a corner of weight 0 is ignored,
  so a ``-inf`` there does not turn the result into ``nan``."""
  weights = np.where(_CORNERS[None, :, 0] == 1, frac[:, None, 0], 1.0 - frac[:, None, 0]) * np.where(
    _CORNERS[None, :, 1] == 1, frac[:, None, 1], 1.0 - frac[:, None, 1]
  )
  with np.errstate(invalid="ignore"):
    return np.sum(np.where(weights > 0, weights * corner_values, 0.0), axis=1)


def _match_rows(table: np.ndarray, queries: np.ndarray) -> np.ndarray:
  """Position in ``table`` ([T, k] ints, rows unique) of each row of ``queries``; -1 where absent."""
  _, inverse = np.unique(np.concatenate([table, queries]), axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  position = np.full(inverse.max(initial=-1) + 1, -1, dtype=np.int64)
  position[inverse[: len(table)]] = np.arange(len(table))
  return position[inverse[len(table) :]]


class _Leaves(NamedTuple):
  """Leaves of the local quadtree below the grid's level: cells and their estimated errors."""
  level: np.ndarray  # [F] int: cell size h0 / 2**level
  index: np.ndarray  # [F, 2] int64 cell index at that level (the box's low corner is cell 0)
  neg_e: np.ndarray  # [F] -E at the cell centre
  error: np.ndarray  # [F] |change of the split that made it| / 4, relative to the grid's Z

  def drop(self, rows: np.ndarray) -> "_Leaves":
    keep = np.ones(len(self.level), dtype=bool)
    keep[rows] = False
    return _Leaves(*(a[keep] for a in self))

  def add(self, other: "_Leaves") -> "_Leaves":
    return _Leaves(*(np.concatenate([a, b]) for a, b in zip(self, other)))


def _interface_error(cells: np.ndarray, grid_values: np.ndarray, log_norm: float) -> tuple[float, float]:
  """Midpoint-rule error of the grid outside ``cells`` (a set of its cells) at their edge, and its
  uncertainty, relative to ``Z`` (``log_norm = log Z - log(h_x h_y)``, ``f = exp(-E - log_norm)``).

  By Euler-Maclaurin the error is ``-(h**2 / 24)`` times the flux of ``grad f`` into the cells, per
  axis: ``-(1/24)`` times the sum over edges of ``A = f(inside) - f(outside)``, which is ``h`` times
  the normal derivative at the edge up to ``h**3 / 24`` times the third derivative.  The same from
  the cells one further out on either side, ``B = (f(inside + 1) - f(outside - 1)) / 3``, errs nine
  times as much, so ``|A - B| / 8`` estimates that term; twice it is the uncertainty.  Where those
  cells leave the box, ``|A|`` stands in.  Edges on the box's boundary are left out: beyond it the
  grid sums nothing.
  """
  res = grid_values.shape[0]

  def f(at, ok):
    with np.errstate(over="ignore"):
      return np.exp(grid_values[at[ok, 0], at[ok, 1]] - log_norm)

  estimate, uncertainty = 0.0, 0.0
  for step in ((1, 0), (-1, 0), (0, 1), (0, -1)):
    step = np.asarray(step)
    outside = cells + step
    across = (_match_rows(cells, outside) < 0) & np.all((outside >= 0) & (outside < res), axis=1)
    first = f(cells, across) - f(outside, across)
    inner2, outer2 = cells[across] - step, outside[across] + step
    far = np.all((inner2 >= 0) & (inner2 < res) & (outer2 >= 0) & (outer2 < res), axis=1)
    second = (f(inner2, far) - f(outer2, far)) / 3.0
    estimate += float(np.sum(first))
    uncertainty += float(np.sum(np.abs(first[far] - second)) / 4.0 + np.sum(np.abs(first[~far])))
  return -estimate / 24.0, uncertainty / 24.0


def _refine_around_probes(
  energy_fn: jax.tree_util.Partial,
  probes: np.ndarray,
  probe_neg_e: np.ndarray,
  lo: np.ndarray,
  h0: np.ndarray,
  grid_values: np.ndarray,
  log_z0: float,
  budget: float,
  margin: float,
  max_levels: int,
  max_cells: int,
) -> _LocalRefinement:
  """Refine the grid around probes by a quadtree; returns the change of the integral and its error.

  The integral is the sum over the leaves of a quadtree whose top level is the grid (cells
  ``h0``); splitting a cell into its four children changes it by ``delta = sum(children) -
  parent``, and each child's error is estimated as ``|delta| / 4`` (conservative: after a split
  of a resolved cell the error is about a third of the change, or much less).  Errors and
  changes are relative to the grid's ``Z``.  The lattice extends past the box: a cell outside
  it has no parent in the sum, so splitting it adds its children.

  1. Probes: at each level the ``_PROBE_WINDOW``-square of cells around every probe not resolved
    yet is split (as a union: clustered probes share cells).  Each level's windows lie inside
    the children of the previous level's, so they are leaves.  A probe is resolved once ``-E``
    at it is within ``margin`` of the interpolation between the four nodes around it at the
    newest level, or an unresolved bump there (of mass below ``_UNRESOLVED_MASS_FACTOR *
    exp(-E) * cell area``) could not hold ``budget / (4 * probes)``; that bound joins the error.
  2. Budget: the leaves with the largest errors (half of the total at a time) are split until
    the errors sum to less than ``budget``.  This follows the mass wherever the cells are too
    coarse, such as the flanks of a spike, where the change of spacing between nested windows
    would otherwise leave an ``h**2`` error.

  The unrefined grid keeps its spacing, but around the refined cells it loses the cancellation
  that makes the midpoint rule so accurate on a whole grid: by Euler-Maclaurin its error there is
  ``-(h**2 / 24)`` times the flux of ``grad exp(-E)`` into the refined cells, which
  ``interface`` estimates from the grid's values on either side of their edge (to be
  subtracted from the change).
  """
  half = _PROBE_WINDOW // 2
  offsets = np.arange(1 - half, half + 1)  # a probe's own cell is offset 0, 3 cells from the low side
  res = grid_values.shape[0]
  min_cell_over_coord = _MIN_CELL_ULPS * float(np.finfo(float_dtype()).eps)
  log_area0 = math.log(h0[0] * h0[1])
  probe_tol = budget / (4.0 * len(probes))
  leaves = _Leaves(np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0), np.zeros(0))
  correction, bound_error, cells_split = 0.0, 0.0, 0

  def splittable(level, index):
    h_fine = h0 / 2.0 ** (level[:, None] + 1)
    centre = lo + (index + 0.5) * 2.0 * h_fine
    return np.min(h_fine, axis=1) >= min_cell_over_coord * np.maximum(1.0, np.max(np.abs(centre), axis=1))

  def split(level, index, parent_neg_e, extra_points):
    """Splits cells (with ``-E`` at their centres); returns the changes, the children as leaves
    and ``-E`` at ``extra_points``, or ``None`` where an energy is not finite."""
    h_fine = h0 / 2.0 ** (level[:, None] + 1)
    children = (2 * index[:, None, :] + _CORNERS[None]).reshape(-1, 2)
    child_points = lo + (children + 0.5) * np.repeat(h_fine, 4, axis=0)
    neg_e = _neg_energy_at(energy_fn, np.concatenate([child_points, extra_points]))
    if np.any(np.isnan(neg_e)) or np.any(neg_e == np.inf):
      return None
    child_neg_e = neg_e[: len(children)]
    log_area = log_area0 - 2.0 * level * math.log(2.0)
    with np.errstate(over="ignore", invalid="ignore"):
      coarse = np.exp(parent_neg_e + log_area - log_z0)
      fine = np.exp(child_neg_e.reshape(-1, 4) + (log_area - math.log(4.0) - log_z0)[:, None]).sum(axis=1)
      delta = fine - coarse
    if not np.all(np.isfinite(delta)):
      return None
    made = _Leaves(np.repeat(level + 1, 4), children, child_neg_e, np.repeat(np.abs(delta) / 4.0, 4))
    return delta, made, neg_e[len(children) :]

  def unresolved_bound(which, h):  # mass an unresolved bump at the probes could hold, cells h
    return _UNRESOLVED_MASS_FACTOR * np.exp(probe_neg_e[which] + math.log(h[0] * h[1]) - log_z0)

  def stopped(unresolved_probes: int = 0, unresolved_cells: int = 0) -> _LocalRefinement:
    return _LocalRefinement(correction, interface, interface_error, bound_error + float(np.sum(leaves.error)),
                            cells_split, unresolved_probes, unresolved_cells, finite=True)

  def non_finite() -> _LocalRefinement:
    return _LocalRefinement(math.nan, 0.0, 0.0, math.inf, cells_split, 0, 0, finite=False)

  interface, interface_error = 0.0, 0.0
  active = np.arange(len(probes))  # probes not resolved yet
  for level in range(max_levels + 1):
    if active.size == 0:
      break
    h = h0 / 2.0**level
    pts = probes[active]
    own_cell = np.floor((pts - lo) / h).astype(np.int64)
    window = np.stack(np.broadcast_arrays(own_cell[:, None, None, 0] + offsets[:, None],
                                          own_cell[:, None, None, 1] + offsets[None, :]), axis=-1)
    cells = np.unique(window.reshape(-1, 2), axis=0)
    cell_level = np.full(len(cells), level)
    if level == max_levels or not np.all(splittable(cell_level, cells)) or cells_split + len(cells) > max_cells:
      bound_error += float(np.sum(unresolved_bound(active, h)))
      return stopped(unresolved_probes=active.size)
    if level == 0:  # the grid's own cells, with the very values it summed; none outside the box
      inside = np.all((cells >= 0) & (cells < res), axis=1)
      parent_neg_e = np.full(len(cells), -np.inf)
      parent_neg_e[inside] = grid_values[cells[inside, 0], cells[inside, 1]]
      interface, interface_error = _interface_error(cells[inside], grid_values, log_z0 - log_area0)
    else:
      rows = _match_rows(leaves.index[leaves.level == level], cells)
      assert np.all(rows >= 0), "windows nest, so every cell of one is a leaf made by the last"
      rows = np.flatnonzero(leaves.level == level)[rows]
      parent_neg_e = leaves.neg_e[rows]
      leaves = leaves.drop(rows)
    h_fine = h / 2.0
    node_pos = (pts - lo) / h_fine - 0.5
    node_lo = np.floor(node_pos).astype(np.int64)
    nodes = lo + ((node_lo[:, None, :] + _CORNERS[None]).reshape(-1, 2) + 0.5) * h_fine
    out = split(cell_level, cells, parent_neg_e, nodes)
    if out is None:
      return non_finite()
    delta, made, node_neg_e = out
    correction += float(np.sum(delta))
    cells_split += len(cells)
    leaves = leaves.add(made)
    excess = probe_neg_e[active] - _interpolate_corners(node_neg_e.reshape(-1, 4), node_pos - node_lo)
    bound = unresolved_bound(active, h_fine)
    resolved = excess <= margin
    done = resolved | (bound < probe_tol)
    bound_error += float(np.sum(bound[done & ~resolved]))
    active = active[~done]

  while bound_error + np.sum(leaves.error) >= budget:
    # Split the largest errors that make up half of the total: each split cuts its error about fourfold.
    order = np.argsort(-leaves.error, kind="stable")
    cumulative = np.cumsum(leaves.error[order])
    take = order[: min(int(np.searchsorted(cumulative, 0.5 * cumulative[-1])) + 1, _MAX_SPLIT_CELLS)]
    take = take[splittable(leaves.level[take], leaves.index[take])]
    if take.size == 0 or cells_split + take.size > max_cells:
      return stopped(unresolved_cells=int(np.sum(leaves.error > 0)))
    out = split(leaves.level[take], leaves.index[take], leaves.neg_e[take], np.zeros((0, 2)))
    if out is None:
      return non_finite()
    delta, made, _ = out
    correction += float(np.sum(delta))
    cells_split += take.size
    leaves = leaves.drop(take).add(made)
  return stopped()


def _check_probes(
  energy_fn: jax.tree_util.Partial,
  probes: np.ndarray,
  stats: _GridStats,
  lo: np.ndarray,
  hi: np.ndarray,
  resolution: int,
  *,
  tol: float,
  margin: float,
  max_levels: int,
  max_cells: int,
) -> _ProbeCheck:
  """Compare the final grid with ``-E`` at the probes and refine around those it misses.

  A probe inside the box is suspect when ``-E`` at it exceeds the grid's bilinear interpolation
  by more than ``margin``: at a smooth peak of width ``s`` the excess is at most about
  ``h**2 / (4 s**2)`` (0.25 at ``h = s``, 1 at ``h = 2 s``, where the midpoint rule still
  resolves it), so more means a feature narrower than a cell.  A probe outside the box is
  always suspect: the grid has not looked there.  A suspect probe where an unresolved bump
  (mass below ``_UNRESOLVED_MASS_FACTOR * exp(-E) * cell area``) could not hold a share of
  ``tol / 16`` is left alone, the bound joining the error; the others are refined
  (:func:`_refine_around_probes`) to an error of the rest of ``tol / 4``.
  """
  reasons = []
  neg_e = _neg_energy_at(energy_fn, probes)
  usable = np.isfinite(neg_e) | (neg_e == -np.inf)
  if not np.all(usable):
    reasons.append(f"the energy is not finite at {int(np.sum(~usable))} of {len(probes)} probes")
  probe_max = float(np.max(neg_e[usable])) if np.any(usable) else math.nan
  probes, neg_e = probes[usable], neg_e[usable]
  h = (hi - lo) / resolution
  grid_values = np.asarray(jnp.concatenate(stats.neg_energy_chunks), dtype=np.float64)
  grid_values = grid_values[: resolution * resolution].reshape(resolution, resolution)  # [x index, y index]
  inside = np.all((probes >= lo) & (probes < hi), axis=1)
  node_pos = (probes[inside] - lo) / h - 0.5
  node_lo = np.clip(np.floor(node_pos), 0, resolution - 2).astype(np.int64)
  corners = node_lo[:, None, :] + _CORNERS[None]
  interpolated = _interpolate_corners(grid_values[corners[..., 0], corners[..., 1]],
                                      np.clip(node_pos - node_lo, 0.0, 1.0))
  excess = np.full(len(probes), np.nan)
  excess[inside] = neg_e[inside] - interpolated
  comparable = inside & ~np.isnan(excess)  # nan: -E is -inf at the probe and the grid alike
  max_excess = float(np.max(excess[comparable])) if np.any(comparable) else -math.inf
  with np.errstate(over="ignore"):
    bound = _UNRESOLVED_MASS_FACTOR * np.exp(neg_e + math.log(h[0] * h[1]) - stats.log_z)
  suspect = np.where(inside, excess > margin, True)
  budget = tol / 4.0
  significant = bound >= budget / (4.0 * max(1, int(np.sum(suspect))))
  flagged = np.flatnonzero(suspect & significant)
  error = float(np.sum(bound[suspect & ~significant]))
  log_z, cells = stats.log_z, 0
  if flagged.size:
    local = _refine_around_probes(energy_fn, probes[flagged], neg_e[flagged], lo, h, grid_values, stats.log_z,
                                  budget=budget - error, margin=margin, max_levels=max_levels, max_cells=max_cells)
    cells = local.cells_split
    if not local.finite or not 1.0 + local.correction - local.interface > 0.0:
      reasons.append("the energy is not finite (or exp(-E) overflows) during local refinement around probes")
      return _ProbeCheck(math.nan, math.inf, probe_max, max_excess, int(flagged.size), cells, tuple(reasons))
    if local.unresolved_probes or local.unresolved_cells:
      reasons.append(f"local refinement stopped with {local.unresolved_probes} probes and {local.unresolved_cells} "
                     f"cells unresolved, at max_refine_levels={max_levels}, max_refine_cells={max_cells} or "
                     "the float precision of the energy")
    change = local.correction - local.interface
    log_z = stats.log_z + math.log1p(change)
    error = (error + local.error + local.interface_error) / (1.0 + change)
  return _ProbeCheck(log_z, error, probe_max, max_excess, int(flagged.size), cells, tuple(reasons))


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
  probes=None,
  probe_margin: float = 1.0,
  max_refine_levels: int = 24,
  max_refine_cells: int = 1 << 20,
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
  4. With ``probes``: ``-E`` at each probe is compared with the final grid's
    bilinear interpolation at it; where it is more than ``probe_margin``
    above (a feature narrower than a cell, such as a spike at a data point)
    or the probe lies outside the box, the grid is refined around the probe
    by a local quadtree to an estimated error of ``tol / 4``, which is added
    to ``error_estimate`` (see ``_check_probes``).  For a smooth energy no
    probe is flagged and the cost is one energy evaluation per probe.

  ``converged`` is ``False`` (and ``error_estimate`` is whatever was reached,
  possibly ``inf``) when ``max_resolution``, ``max_growths`` or a refinement
  budget is exhausted first, or the energy is not finite on the grid or at a
  probe.  Because the midpoint rule
  converges faster than geometrically for smooth energies, the difference
  between successive resolutions overestimates the error of the finer one;
  the test can in principle be fooled if both grids are far coarser than the
  narrowest mode, so ``initial_resolution`` should not be tiny.  Mass is
  only found if it is connected to the box: an isolated spurious mode far
  outside it, behind a region of negligible density at the box edge, is
  missed (a larger ``margin``, explicit ``lo``/``hi`` or a probe on it guards
  against that).

  Without probes, a spike much narrower than a cell that no node of any
  grid hits is invisible: the result can be ``converged`` and wrong by the
  spike's mass.  Probes guard against point-like features at (or within the
  feature's width of) a probe; a long feature narrower than a cell, a ridge,
  is only refined near the probes on it.

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
   probes: points ``[N, 2]`` where mass the grid misses would show: the
    data, test points, generator samples (where a run-away energy puts its
    spikes).  ``None``: no probe check.
   probe_margin: nats by which ``-E`` at a probe may exceed the grid's
    interpolation before it counts as unresolved.
   max_refine_levels: halvings of the cell size while resolving the probes;
    the float precision of the energy's dtype may stop refinement sooner.
   max_refine_cells: cells the local refinement may split (four energy
    evaluations each); past it the result is not converged.

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
  if not probe_margin >= 0:
    raise ValueError(f"probe_margin must be non-negative, got {probe_margin}")
  if max_refine_levels < 1 or max_refine_cells < 1:
    raise ValueError("need max_refine_levels >= 1 and max_refine_cells >= 1")
  if probes is not None:
    probes = np.asarray(probes, dtype=np.float64)
    if probes.ndim != 2 or probes.shape[1] != 2:
      raise ValueError(f"probes must have shape [N, 2], got {probes.shape}")
    if not np.all(np.isfinite(probes)):
      raise ValueError("probes contain non-finite values")
    probes = probes if probes.shape[0] else None
  box_lo, box_hi = _initial_box(data, lo, hi, margin)
  res0 = min(int(initial_resolution), int(max_resolution))
  chunk = _round_chunk(min(chunk_size, int(max_resolution) ** 2))
  kernel = _make_grid_kernel(energy_fn, chunk)

  res = res0
  growths = 0
  history: list[tuple[int, float]] = []

  def result(stats: _GridStats, reason: str) -> GridLogZ:
    reasons = [reason] if reason else []
    if len(history) >= 2:
      err = abs(history[-1][1] - history[-2][1]) + stats.tail_mass
    else:
      err = math.inf
    log_z, probe_max, max_excess, refined, refined_cells = stats.log_z, -math.inf, -math.inf, 0, 0
    if not math.isfinite(stats.log_z):
      err = math.inf
      reasons = [{math.inf: "exp(-E) is infinite on the grid",
                  -math.inf: "exp(-E) underflows to 0 on the whole grid"}.get(stats.log_z,
                                                                             "the energy is not finite on the grid")]
    elif probes is not None:
      check = _check_probes(as_partial(energy_fn), probes, stats, box_lo, box_hi, res, tol=tol,
                            margin=probe_margin, max_levels=max_refine_levels, max_cells=max_refine_cells)
      log_z, probe_max, max_excess = check.log_z, check.probe_max_neg_energy, check.max_probe_excess
      refined, refined_cells = check.refined, check.cells
      err += check.error
      reasons += check.reasons
    if not reasons and not err < tol:
      reasons.append(f"error estimate {err:.3g} (grid, tails and probe refinement) is not below tol={tol:g}")
    return GridLogZ(
      log_z=float(log_z),
      error_estimate=float(err),
      lo=(float(box_lo[0]), float(box_lo[1])),
      hi=(float(box_hi[0]), float(box_hi[1])),
      resolution=res,
      converged=not reasons,
      tail_mass=float(stats.tail_mass),
      history=tuple(history),
      probe_max_neg_energy=float(probe_max),
      grid_max_neg_energy=float(stats.max_neg_energy),
      max_probe_excess=float(max_excess),
      refined_probes=int(refined),
      refined_cells=int(refined_cells),
      local_correction=float(log_z - stats.log_z) if math.isfinite(stats.log_z) else 0.0,
      reason="; ".join(reasons),
    )

  while True:
    # The last grid's -E per cell is kept for the probe check (res^2 floats on the device).
    stats = _grid_stats(kernel, chunk, box_lo, box_hi, res, band, keep_values=probes is not None)
    if not math.isfinite(stats.log_z):
      history.append((res, stats.log_z))
      return result(stats, reason="not finite")
    grow = stats.side_tails > tail_tol / 4.0
    if np.any(grow):
      if growths >= max_growths:
        history.append((res, stats.log_z))
        return result(stats, reason=f"box growth budget max_growths={max_growths} exhausted: the mass beyond "
                                    "the box is not negligible (is exp(-E) normalisable?)")
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
        return result(stats, reason="")
    if 2 * res > max_resolution:
      return result(stats, reason=f"successive resolutions did not agree to tol={tol:g} within "
                                  f"max_resolution={max_resolution}")
    res *= 2
