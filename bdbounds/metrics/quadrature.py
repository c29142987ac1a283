"""Grid quadrature for 2-D energy-based models: log Z, exact NLL and KL.

For a 2-D density ``p(x) = exp(-E(x)) / Z`` the partition function can be
computed to high accuracy by a midpoint rule on a regular grid, which turns
test NLL ``E_data[E(x)] + log Z`` and ``KL(p_data || p)`` into exact (up to a
stated quadrature error) numbers rather than bounds.

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

Conventions: ``energy_fn`` maps an array of points ``[N, 2]`` to energies
``[N]`` (an output of shape ``[N, 1]`` is accepted) and must be traceable by
JAX.  Grids have ``resolution x resolution`` cells over the box
``[lo[0], hi[0]] x [lo[1], hi[1]]``; the quadrature nodes are the cell centres.
Everything is in nats.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "GridLogZ",
  "MonteCarloEstimate",
  "adaptive_log_partition",
  "density_on_grid",
  "kl_data_model",
  "kl_data_model_mc",
  "log_density_fn",
  "log_partition_on_grid",
  "nll",
]

EnergyFn = Callable[[jax.Array], jax.Array]

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


class MonteCarloEstimate(NamedTuple):
  """A sample mean and its standard error (``std / sqrt(n)``)."""

  value: float
  stderr: float


class _GridStats(NamedTuple):
  log_z: float  # log of the midpoint integral over the box
  tail_mass: float  # estimated outside mass / inside mass, all four sides
  side_tails: np.ndarray  # [4] the same per side: x-low, x-high, y-low, y-high


# ---------------------------------------------------------------------------
# Helpers


def _float_dtype():
  return jnp.zeros(()).dtype  # float32, or float64 under jax_enable_x64


def _as_vector(values: jax.Array, n: int) -> jax.Array:
  values = jnp.asarray(values)
  if values.shape != (n,):
    if values.size != n:
      raise ValueError(
        f"energy/log-density function returned shape {values.shape} "
        f"for {n} points; expected ({n},) or ({n}, 1)"
      )
    values = values.reshape(n)
  return values


def _box(lo: Sequence[float], hi: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
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


def _round_chunk(chunk_size: int) -> int:
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  return _SUM_BLOCK * max(1, -(-int(chunk_size) // _SUM_BLOCK))


def _cell_centres(lo: float, hi: float, resolution: int) -> np.ndarray:
  h = (hi - lo) / resolution
  return lo + (np.arange(resolution, dtype=np.float64) + 0.5) * h


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
  dtype = _float_dtype()
  out = np.empty((n,), dtype=np.float64)
  for start in range(0, n, chunk):
    block = points[start : start + chunk]
    m = block.shape[0]
    if m < chunk:
      block = np.concatenate([block, np.repeat(block[:1], chunk - m, axis=0)], axis=0)
    vals = fn(jnp.asarray(block, dtype=dtype))
    out[start : start + m] = np.asarray(_as_vector(vals, chunk), dtype=np.float64)[:m]
  return out


def _jit_vector_fn(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  return jax.jit(lambda x: _as_vector(fn(x), x.shape[0]))


# ---------------------------------------------------------------------------
# Midpoint rule on a grid


def _make_grid_kernel(energy_fn: EnergyFn, chunk: int):
  """Jitted kernel: for the cells ``start .. start+chunk-1`` of a grid, returns
  ``(m, s)`` with ``m`` the chunk maximum of ``-E`` and ``s[g]`` the sum of
  ``exp(-E - m)`` over the cells of group ``g`` (see ``_N_GROUPS``).

  Grid geometry is passed as traced arguments, so one compilation serves
  every resolution and box.
  """

  def kernel(start, lo, h, res, k):
    dtype = lo.dtype
    idx = start + jnp.arange(chunk, dtype=jnp.int32)
    valid = idx < res * res
    i = idx // res  # x index
    j = idx % res  # y index
    pts = jnp.stack(
      [lo[0] + (i.astype(dtype) + 0.5) * h[0], lo[1] + (j.astype(dtype) + 0.5) * h[1]],
      axis=-1,
    )
    neg_e = -_as_vector(energy_fn(pts), chunk)
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

  return jax.jit(kernel)


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
  dtype = _float_dtype()
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
  lo_a, hi_a = _box(lo, hi)
  chunk = _round_chunk(min(chunk_size, int(resolution) ** 2))
  kernel = _make_grid_kernel(energy_fn, chunk)
  return _grid_stats(kernel, chunk, lo_a, hi_a, resolution, band=0.05).log_z


def _initial_box(data, lo, hi, margin: float) -> tuple[np.ndarray, np.ndarray]:
  if lo is not None or hi is not None:
    if lo is None or hi is None:
      raise ValueError("give both lo and hi, or neither")
    return _box(lo, hi)
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


# ---------------------------------------------------------------------------
# Densities, NLL, KL


def log_density_fn(energy_fn: EnergyFn, log_z: float) -> Callable[[jax.Array], jax.Array]:
  """``x -> -E(x) - log_z``: the normalised log density ``log p(x)`` ([N, 2] -> [N])."""
  log_z = float(log_z)

  def log_prob(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return -_as_vector(energy_fn(x), x.shape[0]) - log_z

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


def _vector_fn(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  # Data log-densities are called eagerly (they may be numpy/scipy code).
  return lambda x: _as_vector(fn(x), x.shape[0])


def _grid_points(lo: np.ndarray, hi: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  xs = _cell_centres(lo[0], hi[0], resolution)
  ys = _cell_centres(lo[1], hi[1], resolution)
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

  Use the box/resolution of :func:`adaptive_log_partition` (or finer) and
  cross-check with :func:`kl_data_model_mc`.
  """
  lo_a, hi_a = _box(lo, hi)
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
  lo_a, hi_a = _box(lo, hi)
  resolution = int(resolution)
  xs, ys = _grid_points(lo_a, hi_a, resolution)
  out = np.empty((resolution, resolution), dtype=np.float64)
  for rows, _, log_p, _ in _model_log_density_rows(energy_fn, log_z, lo_a, hi_a, resolution, chunk_size):
    out[rows] = log_p.reshape(-1, resolution)
  return xs, ys, out
