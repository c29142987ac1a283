"""Two-dimensional toy densities in pure JAX.

The datasets follow the conventions of the widely used FFJORD ``toy_data.py``
(which in turn wraps a few scikit-learn generators), re-expressed with
``jax.random`` so that sampling is jittable and reproducible from a key.
Wherever the law has a tractable density, an exact ``log_prob`` is provided.

Conventions, all in the final (scaled) coordinates unless stated:

* ``8gaussians``: centers ``4 * (±1, 0), 4 * (0, ±1), 4 * (±1/√2, ±1/√2)``,
 point ``0.5 N(0, I) + center``, then divided by 1.414. Equal weights.
* ``25gaussians`` (WGAN-GP convention): centers ``(2i, 2j)``, ``i, j ∈ {-2..2}``,
 point ``0.05 N(0, I) + center``, then divided by 2.828 (mode std ≈ 0.0177).
* ``rings``: circles of radius ``3 * (0.25, 0.5, 0.75, 1)`` with equal weight,
 uniform angle, plus ``N(0, 0.08² I)``.
* ``circles``: ``make_circles(factor=0.5, noise=0.08)`` times 3: radii 3 and 1.5,
 equal weight, uniform angle, plus ``N(0, 0.24² I)``.
* ``moons``: ``make_moons(noise=0.1)`` then ``* 2 + (-1, -0.2)``: outer moon
 ``(cos θ, sin θ)``, inner moon ``(1 - cos θ, 0.5 - sin θ)``, ``θ ~ U(0, π)``,
 equal weight, ``N(0, 0.1² I)`` noise added before the affine map.
* ``pinwheel``: 5 arms, radial std 0.3, tangential std 0.1, rate 0.25, times 2.
* ``2spirals``: two interleaved spirals (``d`` and ``-d``), divided by 3, plus
 ``0.1 N(0, I)``.
* ``swissroll``: ``make_swiss_roll(noise=1.0)`` keeping coordinates (x, z),
 divided by 5: ``t ~ U(1.5π, 4.5π)``, ``(t cos t, t sin t)/5 + N(0, 0.2² I)``.
* ``checkerboard``: uniform on the 8 "black" squares of side 2 tiling
 ``[-4, 4]²`` (density 1/32).

Deviations from the reference code, all so that every sample is an i.i.d.
draw from a law whose density we can write down:

* Where the reference places points at deterministic ``linspace`` angles
 (rings, circles, moons), angles are drawn uniformly at random.
* Where the reference splits the batch into fixed equal groups (rings,
 circles, moons, pinwheel, 25gaussians), each point picks its component
 uniformly at random. (Pinwheel also no longer drops ``n mod 5`` points.)
* ``2spirals`` keeps the exact half/half split of the reference but shuffles
 the rows, so any prefix of a batch covers both spirals.

Densities of the form "point on a curve + isotropic Gaussian noise" are
integrals over the curve parameter. For circles the angle integral is closed
form (a modified Bessel function); for moons and the swiss roll it is
evaluated by Gauss-Legendre quadrature. All log-densities are computed in log
space (``logsumexp``/``i0e``) so they stay finite far from the support, and
in the dtype of the input (float32 or float64).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax.scipy.special import i0e, logsumexp

__all__ = [
  "TOY_DATASETS",
  "ToyDataset",
  "get_toy_dataset",
  "gaussian_mixture_log_prob",
  "ring_mixture_log_prob",
  "moons_log_prob",
  "swissroll_log_prob",
  "checkerboard_log_prob",
]

Sampler = Callable[[jax.Array, int], jax.Array]
LogProb = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ToyDataset:
  """A 2-D toy distribution.

  Attributes:
   name: dataset name, one of ``TOY_DATASETS``.
   sample: ``(key, n) -> [n, 2]`` float32 samples; ``n`` must be static
    under ``jit`` (already jitted with ``static_argnums=1``).
   log_prob: ``[..., 2] -> [...]`` exact log-density in nats, computed in
    the input's float dtype; ``None`` where no tractable density is known.
   extent: the square ``[-extent, extent]²`` holds all but a negligible
    (≲1e-6) fraction of the mass; a natural window for plots and for grid
    quadrature.
   description: one-line summary of the construction.
  """

  name: str
  sample: Sampler
  log_prob: LogProb | None
  extent: float
  description: str


# ----------------------------------------------------------------------------
# Shared helpers.


def _as_float(x: jax.Array) -> jax.Array:
  """Promotes to a float dtype (float32 at least) and checks the last axis."""
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if x.ndim < 1 or x.shape[-1] != 2:
    raise ValueError(f"expected points of shape [..., 2], got {x.shape}")
  return x


def _log_normal_norm(std: float) -> float:
  """log of the 2-D isotropic Gaussian normaliser 1 / (2π std²)."""
  return -math.log(2.0 * math.pi * std**2)


def _sample_uniform_angle(key: jax.Array, n: int) -> jax.Array:
  return jax.random.uniform(key, (n,), jnp.float32, 0.0, 2.0 * math.pi)


def _unit_circle(theta: jax.Array) -> jax.Array:
  return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)


# ----------------------------------------------------------------------------
# Gaussian mixtures: 8gaussians, 25gaussians.

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_EIGHT_CENTERS = (
  4.0
  * np.array(
    [
      (1.0, 0.0),
      (-1.0, 0.0),
      (0.0, 1.0),
      (0.0, -1.0),
      (_SQRT_HALF, _SQRT_HALF),
      (_SQRT_HALF, -_SQRT_HALF),
      (-_SQRT_HALF, _SQRT_HALF),
      (-_SQRT_HALF, -_SQRT_HALF),
    ]
  )
  / 1.414
)
_EIGHT_STD = 0.5 / 1.414

_GRID_CENTERS = (
  np.array([(2.0 * i, 2.0 * j) for i in range(-2, 3) for j in range(-2, 3)]) / 2.828
)
_GRID_STD = 0.05 / 2.828


def gaussian_mixture_log_prob(x: jax.Array, centers: np.ndarray, std: float) -> jax.Array:
  """Equal-weight mixture of isotropic Gaussians ``N(center, std² I)``."""
  x = _as_float(x)
  centers = jnp.asarray(centers, x.dtype)
  sq_dist = jnp.sum((x[..., None, :] - centers) ** 2, axis=-1)
  log_mix = logsumexp(-0.5 * sq_dist / std**2, axis=-1) - math.log(len(centers))
  return log_mix + _log_normal_norm(std)


def _sample_gaussian_mixture(key, n, centers: np.ndarray, std: float):
  key_idx, key_noise = jax.random.split(key)
  idx = jax.random.randint(key_idx, (n,), 0, len(centers))
  noise = std * jax.random.normal(key_noise, (n, 2), jnp.float32)
  return jnp.asarray(centers, jnp.float32)[idx] + noise


@functools.partial(jax.jit, static_argnums=1)
def _sample_8gaussians(key: jax.Array, n: int) -> jax.Array:
  return _sample_gaussian_mixture(key, n, _EIGHT_CENTERS, _EIGHT_STD)


@jax.jit
def _log_prob_8gaussians(x: jax.Array) -> jax.Array:
  return gaussian_mixture_log_prob(x, _EIGHT_CENTERS, _EIGHT_STD)


@functools.partial(jax.jit, static_argnums=1)
def _sample_25gaussians(key: jax.Array, n: int) -> jax.Array:
  return _sample_gaussian_mixture(key, n, _GRID_CENTERS, _GRID_STD)


@jax.jit
def _log_prob_25gaussians(x: jax.Array) -> jax.Array:
  return gaussian_mixture_log_prob(x, _GRID_CENTERS, _GRID_STD)


# ----------------------------------------------------------------------------
# Noisy circles: rings, circles.

_RINGS_RADII = (0.75, 1.5, 2.25, 3.0)
_RINGS_STD = 0.08
_CIRCLES_RADII = (3.0, 1.5)
_CIRCLES_STD = 0.08 * 3.0  # sklearn adds the noise before the x3 scaling.


def ring_mixture_log_prob(x: jax.Array, radii: tuple[float, ...], std: float) -> jax.Array:
  """Equal-weight mixture of "uniform angle on a circle + N(0, std² I)".

  Averaging the Gaussian over the angle gives, with ``ρ = |x|``,
  ``p_r(x) = exp(-(ρ² + r²) / (2 std²)) I0(r ρ / std²) / (2π std²)``.
  Writing ``log I0(a) = log i0e(a) + a`` folds the exponentials into
  ``-(ρ - r)² / (2 std²)``, which stays finite however small ``std`` is.
  """
  x = _as_float(x)
  sq_norm = jnp.sum(x**2, axis=-1)
  # Double-where keeps gradients finite at the origin.
  safe_sq_norm = jnp.where(sq_norm > 0, sq_norm, 1.0)
  rho = jnp.where(sq_norm > 0, jnp.sqrt(safe_sq_norm), 0.0)
  radii_arr = jnp.asarray(radii, x.dtype)
  rho = rho[..., None]
  log_rings = -0.5 * (rho - radii_arr) ** 2 / std**2 + jnp.log(i0e(radii_arr * rho / std**2))
  return logsumexp(log_rings, axis=-1) - math.log(len(radii)) + _log_normal_norm(std)


def _sample_ring_mixture(key, n, radii: tuple[float, ...], std: float):
  key_idx, key_angle, key_noise = jax.random.split(key, 3)
  radius = jnp.asarray(radii, jnp.float32)[jax.random.randint(key_idx, (n,), 0, len(radii))]
  # Uniform random angles replace the reference code's deterministic linspace.
  points = radius[:, None] * _unit_circle(_sample_uniform_angle(key_angle, n))
  return points + std * jax.random.normal(key_noise, (n, 2), jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def _sample_rings(key: jax.Array, n: int) -> jax.Array:
  return _sample_ring_mixture(key, n, _RINGS_RADII, _RINGS_STD)


@jax.jit
def _log_prob_rings(x: jax.Array) -> jax.Array:
  return ring_mixture_log_prob(x, _RINGS_RADII, _RINGS_STD)


@functools.partial(jax.jit, static_argnums=1)
def _sample_circles(key: jax.Array, n: int) -> jax.Array:
  return _sample_ring_mixture(key, n, _CIRCLES_RADII, _CIRCLES_STD)


@jax.jit
def _log_prob_circles(x: jax.Array) -> jax.Array:
  return ring_mixture_log_prob(x, _CIRCLES_RADII, _CIRCLES_STD)


# ----------------------------------------------------------------------------
# Curves with Gaussian noise and no closed form: moons, swissroll.


def _curve_log_prob(
  x: jax.Array,
  curves: tuple[Callable[[np.ndarray], np.ndarray], ...],
  t_range: tuple[float, float],
  std: float,
  num_nodes: int,
) -> jax.Array:
  """Equal-weight mixture over ``curves`` of ``curve(t) + N(0, std² I)``, t uniform.

  ``p(x) = mean_c ∫ N(x; curve_c(t), std² I) dt / (t1 - t0)``, with the
  integral done by ``num_nodes``-point Gauss-Legendre quadrature. The nodes
  and curve points are trace-time float64 constants; the sum over nodes is a
  logsumexp so far-away points get a finite (very negative) value.
  Memory is ``O(N * len(curves) * num_nodes)``; chunk very large inputs.
  """
  x = _as_float(x)
  # scipy's tridiagonal (Golub-Welsch) solver is much faster than numpy's
  # leggauss, which solves a dense n x n eigenproblem, for hundreds of nodes.
  nodes, weights = scipy.special.roots_legendre(num_nodes)
  t0, t1 = t_range
  t = 0.5 * (t1 - t0) * (nodes + 1.0) + t0
  # Uniform density 1/(t1 - t0) times the rescaled weights (t1 - t0)/2 * w.
  log_w = np.log(0.5 * weights / len(curves))
  points = np.concatenate([curve(t) for curve in curves], axis=0)  # [C*K, 2]
  log_w = np.tile(log_w, len(curves))
  sq_dist = jnp.sum((x[..., None, :] - jnp.asarray(points, x.dtype)) ** 2, axis=-1)
  log_terms = jnp.asarray(log_w, x.dtype) - 0.5 * sq_dist / std**2
  return logsumexp(log_terms, axis=-1) + _log_normal_norm(std)


# Moons in final coordinates: sklearn curve, then x2 + (-1, -0.2).
_MOONS_STD = 0.1 * 2.0
_MOONS_NODES = 128
_MOONS_SHIFT = np.array([-1.0, -0.2])


def _outer_moon(theta):
  return 2.0 * np.stack([np.cos(theta), np.sin(theta)], axis=-1) + _MOONS_SHIFT


def _inner_moon(theta):
  return 2.0 * np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=-1) + _MOONS_SHIFT


@functools.partial(jax.jit, static_argnames="num_nodes")
def moons_log_prob(x: jax.Array, num_nodes: int = _MOONS_NODES) -> jax.Array:
  """Exact ``moons`` log-density up to quadrature error (≪1e-6 relative
  on and around the support at the default node count)."""
  return _curve_log_prob(x, (_outer_moon, _inner_moon), (0.0, math.pi), _MOONS_STD, num_nodes)


@functools.partial(jax.jit, static_argnums=1)
def _sample_moons(key: jax.Array, n: int) -> jax.Array:
  key_moon, key_angle, key_noise = jax.random.split(key, 3)
  # Random angle and moon per point replace sklearn's linspace and half/half split.
  theta = jax.random.uniform(key_angle, (n,), jnp.float32, 0.0, math.pi)
  outer = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
  inner = jnp.stack([1.0 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=-1)
  is_outer = jax.random.bernoulli(key_moon, 0.5, (n,))
  points = jnp.where(is_outer[:, None], outer, inner)
  points = points + 0.1 * jax.random.normal(key_noise, (n, 2), jnp.float32)
  return points * 2.0 + jnp.asarray(_MOONS_SHIFT, jnp.float32)


# Swiss roll in final coordinates: sklearn (x, z) coordinates divided by 5.
_SWISSROLL_T_RANGE = (1.5 * math.pi, 4.5 * math.pi)
_SWISSROLL_STD = 1.0 / 5.0
_SWISSROLL_NODES = 512


def _swissroll_curve(t):
  return np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) / 5.0


@functools.partial(jax.jit, static_argnames="num_nodes")
def swissroll_log_prob(x: jax.Array, num_nodes: int = _SWISSROLL_NODES) -> jax.Array:
  """Exact ``swissroll`` log-density up to quadrature error (≪1e-6 relative
  on and around the support at the default node count)."""
  return _curve_log_prob(
    x, (_swissroll_curve,), _SWISSROLL_T_RANGE, _SWISSROLL_STD, num_nodes
  )


@functools.partial(jax.jit, static_argnums=1)
def _sample_swissroll(key: jax.Array, n: int) -> jax.Array:
  key_t, key_noise = jax.random.split(key)
  t = jax.random.uniform(key_t, (n,), jnp.float32, *_SWISSROLL_T_RANGE)
  points = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1)
  points = points + jax.random.normal(key_noise, (n, 2), jnp.float32)
  return points / 5.0


# ----------------------------------------------------------------------------
# Datasets without a tractable density: pinwheel, 2spirals.


@functools.partial(jax.jit, static_argnums=1)
def _sample_pinwheel(key: jax.Array, n: int) -> jax.Array:
  radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
  key_label, key_feat = jax.random.split(key)
  labels = jax.random.randint(key_label, (n,), 0, num_classes)
  features = jax.random.normal(key_feat, (n, 2), jnp.float32)
  features = features * jnp.array([radial_std, tangential_std], jnp.float32)
  features = features.at[:, 0].add(1.0)
  class_angle = labels.astype(jnp.float32) * (2.0 * math.pi / num_classes)
  angles = class_angle + rate * jnp.exp(features[:, 0])
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  # The reference computes features @ [[cos, -sin], [sin, cos]] (row vector
  # on the left), i.e. a clockwise rotation; kept as is to match its plots.
  rotated = jnp.stack(
    [features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos],
    axis=-1,
  )
  return 2.0 * rotated


@functools.partial(jax.jit, static_argnums=1)
def _sample_2spirals(key: jax.Array, n: int) -> jax.Array:
  key_t, key_jitter, key_perm, key_noise = jax.random.split(key, 4)
  t = jnp.sqrt(jax.random.uniform(key_t, (n,), jnp.float32)) * (540.0 * 2.0 * math.pi / 360.0)
  jitter = 0.5 * jax.random.uniform(key_jitter, (n, 2), jnp.float32)
  spiral = jnp.stack([-jnp.cos(t) * t, jnp.sin(t) * t], axis=-1) + jitter
  # First ceil(n/2) rows keep d, the rest become -d; then shuffle the rows.
  sign = jnp.where(jnp.arange(n) < n - n // 2, 1.0, -1.0).astype(jnp.float32)
  points = jax.random.permutation(key_perm, sign[:, None] * spiral, axis=0)
  return points / 3.0 + 0.1 * jax.random.normal(key_noise, (n, 2), jnp.float32)


# ----------------------------------------------------------------------------
# Checkerboard.

_CHECKERBOARD_LOG_DENSITY = -math.log(32.0)


@jax.jit
def checkerboard_log_prob(x: jax.Array) -> jax.Array:
  """``log(1/32)`` on the 8 black squares of ``[-4, 4]²``, exactly ``-inf`` elsewhere.

  Squares are half-open, ``[2i, 2i + 2) x [2j, 2j + 2)`` with ``i + j`` even,
  matching the sampler (uniforms in ``[0, 1)``) so every sample scores
  finite. Boundary points have measure zero; this is just a consistent rule.
  """
  x = _as_float(x)
  cell = jnp.floor(x / 2.0)
  in_box = jnp.all((cell >= -2) & (cell <= 1), axis=-1)
  is_black = jnp.mod(cell[..., 0] + cell[..., 1], 2) == 0
  return jnp.where(in_box & is_black, _CHECKERBOARD_LOG_DENSITY, -jnp.inf).astype(x.dtype)


@functools.partial(jax.jit, static_argnums=1)
def _sample_checkerboard(key: jax.Array, n: int) -> jax.Array:
  key_x1, key_x2, key_row = jax.random.split(key, 3)
  x1 = jax.random.uniform(key_x1, (n,), jnp.float32) * 4.0 - 2.0
  row_shift = jax.random.randint(key_row, (n,), 0, 2).astype(jnp.float32) * 2.0
  x2 = jax.random.uniform(key_x2, (n,), jnp.float32) - row_shift + jnp.mod(jnp.floor(x1), 2.0)
  return jnp.stack([x1, x2], axis=-1) * 2.0


# ----------------------------------------------------------------------------
# Registry.

_DATASETS: Mapping[str, ToyDataset] = types.MappingProxyType(
  {
    "8gaussians": ToyDataset(
      name="8gaussians",
      sample=_sample_8gaussians,
      log_prob=_log_prob_8gaussians,
      extent=5.0,
      description="8 equal Gaussians on a circle of radius 4/1.414, std 0.5/1.414",
    ),
    "25gaussians": ToyDataset(
      name="25gaussians",
      sample=_sample_25gaussians,
      log_prob=_log_prob_25gaussians,
      extent=2.0,
      description="5x5 grid of equal Gaussians at (2i, 2j)/2.828, std 0.05/2.828",
    ),
    "rings": ToyDataset(
      name="rings",
      sample=_sample_rings,
      log_prob=_log_prob_rings,
      extent=3.5,
      description="4 circles of radii 0.75, 1.5, 2.25, 3 plus N(0, 0.08^2) noise",
    ),
    "circles": ToyDataset(
      name="circles",
      sample=_sample_circles,
      log_prob=_log_prob_circles,
      extent=4.5,
      description="2 circles of radii 3 and 1.5 plus N(0, 0.24^2) noise",
    ),
    "moons": ToyDataset(
      name="moons",
      sample=_sample_moons,
      log_prob=moons_log_prob,
      extent=4.5,
      description="sklearn two moons (noise 0.1), then x2 + (-1, -0.2)",
    ),
    "pinwheel": ToyDataset(
      name="pinwheel",
      sample=_sample_pinwheel,
      log_prob=None,
      extent=5.0,
      description="5-arm pinwheel, radial std 0.3, tangential std 0.1, rate 0.25, x2",
    ),
    "2spirals": ToyDataset(
      name="2spirals",
      sample=_sample_2spirals,
      log_prob=None,
      extent=4.0,
      description="two interleaved spirals /3 plus N(0, 0.1^2) noise",
    ),
    "swissroll": ToyDataset(
      name="swissroll",
      sample=_sample_swissroll,
      log_prob=swissroll_log_prob,
      extent=4.0,
      description="sklearn swiss roll (noise 1) in the (x, z) plane, /5",
    ),
    "checkerboard": ToyDataset(
      name="checkerboard",
      sample=_sample_checkerboard,
      log_prob=checkerboard_log_prob,
      extent=4.0,
      description="uniform on the 8 black squares of side 2 tiling [-4, 4]^2",
    ),
  }
)

TOY_DATASETS: tuple[str, ...] = tuple(_DATASETS)


def get_toy_dataset(name: str) -> ToyDataset:
  """Returns the toy dataset called ``name`` (one of ``TOY_DATASETS``)."""
  try:
    return _DATASETS[name]
  except KeyError:
    raise ValueError(
      f"unknown toy dataset {name!r}; valid choices are: {', '.join(TOY_DATASETS)}"
    ) from None
