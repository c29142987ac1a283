"""Tests for the 2-D toy densities in bdbounds.data.toy."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

from bdbounds.data import TOY_DATASETS, ToyDataset, get_toy_dataset
from bdbounds.data import toy

DENSITY_DATASETS = ("8gaussians", "25gaussians", "rings", "circles", "moons", "swissroll", "checkerboard")

# Midpoint-grid cells per axis over [-extent, extent]^2: a multiple of 16 (for
# the chi-square bins) with at least ~3.5 cells per noise std. For the
# checkerboard the cell edges fall on the squares' edges, so the rule is exact.
GRID_CELLS = {
  "8gaussians": 256,
  "25gaussians": 800,
  "rings": 352,
  "circles": 192,
  "moons": 192,
  "swissroll": 192,
  "checkerboard": 160,
}
NUM_BINS = 16
# One odd sample size shared by all tests, so each sampler compiles once.
NUM_MC = 20_001


@pytest.fixture
def x64():
  """float64 for the duration of one test only; other test files run in this process."""
  with jax.enable_x64(True):
    yield


def _eval_chunked(fn, points, chunk=16_384):
  """Evaluates ``fn`` on [N, 2] points in fixed-size chunks (one compilation)."""
  out = []
  for start in range(0, len(points), chunk):
    block = points[start : start + chunk]
    padded = np.zeros((chunk, 2), points.dtype)
    padded[: len(block)] = block
    out.append(np.asarray(fn(jnp.asarray(padded)))[: len(block)])
  return np.concatenate(out)


@functools.cache
def _grid_log_density(name):
  """float64 log-density on the midpoint grid; returns (log_p [m, m], cell side h)."""
  ds = get_toy_dataset(name)
  m = GRID_CELLS[name]
  h = 2.0 * ds.extent / m
  centers = -ds.extent + h * (np.arange(m) + 0.5)
  xx, yy = np.meshgrid(centers, centers, indexing="ij")
  points = np.stack([xx.ravel(), yy.ravel()], axis=-1)
  with jax.enable_x64(True):
    log_p = _eval_chunked(ds.log_prob, points)
  assert log_p.dtype == np.float64
  return log_p.reshape(m, m), h


@functools.cache
def _samples(name):
  x = np.asarray(get_toy_dataset(name).sample(jax.random.key(0), NUM_MC))
  x.setflags(write=False)
  return x


# ----------------------------------------------------------------------------
# API and sampling.


def test_dataset_names_and_types():
  assert TOY_DATASETS == (
    "8gaussians",
    "25gaussians",
    "rings",
    "circles",
    "moons",
    "pinwheel",
    "2spirals",
    "swissroll",
    "checkerboard",
  )
  for name in TOY_DATASETS:
    ds = get_toy_dataset(name)
    assert isinstance(ds, ToyDataset)
    assert ds.name == name
    assert ds.description
    assert (ds.log_prob is not None) == (name in DENSITY_DATASETS)


def test_unknown_name_lists_choices():
  with pytest.raises(ValueError) as excinfo:
    get_toy_dataset("not-a-dataset")
  message = str(excinfo.value)
  assert "not-a-dataset" in message
  for name in TOY_DATASETS:
    assert name in message


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_sample_shape_dtype_determinism(name):
  ds = get_toy_dataset(name)
  x = _samples(name)
  assert x.shape == (NUM_MC, 2)
  assert x.dtype == np.float32
  assert np.all(np.isfinite(x))

  # Same key, same samples; another key, (almost surely) all rows differ.
  np.testing.assert_array_equal(np.asarray(ds.sample(jax.random.key(0), NUM_MC)), x)
  other = np.asarray(ds.sample(jax.random.key(1), NUM_MC))
  assert np.mean(np.any(other != x, axis=-1)) > 0.99

  # Tracing checks (no extra compilations): an outer jit with static n,
  # legacy uint32 keys, and float32 output even with x64 enabled.
  jax.jit(ds.sample, static_argnums=1).lower(jax.random.key(0), NUM_MC)
  with jax.enable_x64(True):
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
      out = jax.eval_shape(lambda k: ds.sample(k, 5), key)
      assert (out.shape, out.dtype) == ((5, 2), jnp.float32)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_samples_lie_within_extent(name):
  assert np.all(np.abs(_samples(name)) <= get_toy_dataset(name).extent)


# ----------------------------------------------------------------------------
# log_prob interface.


@pytest.mark.parametrize("name", DENSITY_DATASETS)
def test_log_prob_dtypes_shapes_and_finiteness(name):
  ds = get_toy_dataset(name)
  # 511 samples and one point far from every support.
  x = np.concatenate([_samples(name)[:511], [[40.0, -40.0]]]).astype(np.float32)

  lp32 = np.asarray(ds.log_prob(jnp.asarray(x)))
  assert lp32.shape == (512,)
  assert lp32.dtype == np.float32
  # Every sample lies in the support.
  assert np.all(np.isfinite(lp32[:-1]))
  # Far away: finite and very negative, except checkerboard's exact zero density.
  if name == "checkerboard":
    assert lp32[-1] == -np.inf
  else:
    assert np.isfinite(lp32[-1]) and lp32[-1] < -50.0

  # Arbitrary leading batch shape, under an outer jit.
  lp_batched = np.asarray(jax.jit(ds.log_prob)(jnp.asarray(x).reshape(8, 64, 2)))
  np.testing.assert_allclose(lp_batched.ravel(), lp32, rtol=1e-6, atol=1e-6)

  with jax.enable_x64(True):
    lp64 = _eval_chunked(ds.log_prob, x.astype(np.float64))
    assert lp64.dtype == np.float64
  np.testing.assert_allclose(lp32, lp64, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------
# Normalisation and agreement between samples and density.


@pytest.mark.parametrize("name", DENSITY_DATASETS)
def test_density_integrates_to_one(name):
  log_p, h = _grid_log_density(name)
  mass = np.sum(np.exp(log_p)) * h**2
  # The extent box claims to hold all but ~1e-6 of the mass.
  assert abs(mass - 1.0) < 1e-5, mass


@pytest.mark.parametrize("name", DENSITY_DATASETS)
def test_sample_cross_entropy_matches_quadrature_entropy(name):
  log_p, h = _grid_log_density(name)
  p = np.exp(log_p)
  entropy = -np.sum(p * np.where(p > 0, log_p, 0.0)) * h**2

  x = _samples(name)
  with jax.enable_x64(True):
    neg_log_p = -_eval_chunked(get_toy_dataset(name).log_prob, x.astype(np.float64))
  std_err = np.std(neg_log_p) / math.sqrt(len(x))
  assert abs(np.mean(neg_log_p) - entropy) <= 4.0 * std_err + 1e-6, (np.mean(neg_log_p), entropy, std_err)


@pytest.mark.parametrize("name", DENSITY_DATASETS)
def test_sample_histogram_matches_density(name):
  """Pearson chi-square of samples in 16x16 bins against quadrature bin masses."""
  ds = get_toy_dataset(name)
  log_p, h = _grid_log_density(name)
  m = GRID_CELLS[name]
  cells_per_bin = m // NUM_BINS
  bin_mass = np.exp(log_p).reshape(NUM_BINS, cells_per_bin, NUM_BINS, cells_per_bin).sum(axis=(1, 3)) * h**2

  x = _samples(name)
  edges = np.linspace(-ds.extent, ds.extent, NUM_BINS + 1)
  observed, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
  expected = len(x) * bin_mass

  keep = expected >= 5.0
  obs, exp = observed[keep], expected[keep]
  rest_obs, rest_exp = len(x) - obs.sum(), max(len(x) - exp.sum(), 0.0)
  if rest_exp >= 5.0:
    obs, exp = np.append(obs, rest_obs), np.append(exp, rest_exp)
  else:
    assert rest_obs <= rest_exp + 5.0 * math.sqrt(rest_exp) + 3.0
  statistic = np.sum((obs - exp) ** 2 / exp)
  p_value = scipy.stats.chi2.sf(statistic, df=len(obs) - 1)
  assert p_value > 1e-4, (statistic, len(obs), p_value)


# ----------------------------------------------------------------------------
# Exactness of the closed forms against independent computations.


def _scipy_mixture_log_prob(points, centers, std):
  comps = [scipy.stats.multivariate_normal(mean=c, cov=std**2 * np.eye(2)).logpdf(points) for c in centers]
  return scipy.special.logsumexp(np.stack(comps, axis=-1), axis=-1) - math.log(len(centers))


def test_8gaussians_matches_scipy_mixture(x64):
  s = 1.0 / math.sqrt(2.0)
  unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
  centers = 4.0 * np.array(unit, dtype=np.float64) / 1.414
  points = np.concatenate(
    [np.random.default_rng(0).uniform(-5, 5, (200, 2)), centers + 0.1, [[0.0, 0.0], [30.0, 0.0]]]
  )
  lp = np.asarray(get_toy_dataset("8gaussians").log_prob(jnp.asarray(points)))
  expected = _scipy_mixture_log_prob(points, centers, 0.5 / 1.414)
  np.testing.assert_allclose(lp, expected, rtol=1e-10, atol=1e-10)


def test_25gaussians_matches_scipy_mixture(x64):
  centers = np.array([(2.0 * i, 2.0 * j) for i in range(-2, 3) for j in range(-2, 3)]) / 2.828
  rng = np.random.default_rng(1)
  points = np.concatenate(
    [rng.uniform(-2, 2, (100, 2)), centers + rng.normal(0, 0.02, centers.shape), [[0.35, 0.35]]]
  )
  lp = np.asarray(get_toy_dataset("25gaussians").log_prob(jnp.asarray(points)))
  expected = _scipy_mixture_log_prob(points, centers, 0.05 / 2.828)
  np.testing.assert_allclose(lp, expected, rtol=1e-10, atol=1e-8)


def _brute_force_curve_log_prob(points, curve_points, std):
  """log mean_k N(x; curve_points[k], std^2 I) over densely spaced curve points."""
  sq = np.sum((points[:, None, :] - curve_points[None]) ** 2, axis=-1)
  return (
    scipy.special.logsumexp(-0.5 * sq / std**2, axis=-1)
    - math.log(len(curve_points))
    - math.log(2 * math.pi * std**2)
  )


@pytest.mark.parametrize(
  "name, radii, std", [("rings", (0.75, 1.5, 2.25, 3.0), 0.08), ("circles", (3.0, 1.5), 0.24)]
)
def test_ring_bessel_form_matches_angle_average(x64, name, radii, std):
  # Equally spaced angles: the periodic trapezoid rule converges spectrally.
  theta = np.linspace(0.0, 2.0 * math.pi, 8192, endpoint=False)
  circle = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
  curve_points = np.concatenate([r * circle for r in radii])  # equal weights
  points = np.array([[0, 0], [0.75, 0], [1, 1], [2, -2.1], [0.3, -3.1], [-1.4, 0.2], [4, 4]], np.float64)
  lp = np.asarray(get_toy_dataset(name).log_prob(jnp.asarray(points)))
  expected = _brute_force_curve_log_prob(points, curve_points, std)
  np.testing.assert_allclose(lp, expected, rtol=1e-9, atol=1e-9)


def _simpson_curve_points(curve, t0, t1, n):
  """Curve points and log composite-Simpson weights (normalised to sum 1); n odd."""
  t = np.linspace(t0, t1, n)
  w = np.ones(n)
  w[1:-1:2], w[2:-1:2] = 4.0, 2.0
  return curve(t), np.log(w / w.sum())


def _weighted_curve_log_prob(points, curve_points, log_w, std):
  sq = np.sum((points[:, None, :] - curve_points[None]) ** 2, axis=-1)
  return scipy.special.logsumexp(log_w - 0.5 * sq / std**2, axis=-1) - math.log(2 * math.pi * std**2)


def test_moons_matches_independent_quadrature(x64):
  def outer(t):
    return np.stack([np.cos(t), np.sin(t)], -1) * 2 + np.array([-1.0, -0.2])

  def inner(t):
    return np.stack([1 - np.cos(t), 1 - np.sin(t) - 0.5], -1) * 2 + np.array([-1.0, -0.2])

  pts_o, log_w = _simpson_curve_points(outer, 0.0, math.pi, 20_001)
  pts_i, _ = _simpson_curve_points(inner, 0.0, math.pi, 20_001)
  curve_points = np.concatenate([pts_o, pts_i])
  log_w = np.concatenate([log_w, log_w]) - math.log(2.0)
  points = np.array([[0, 0.3], [-3, -0.2], [1, 1.8], [3, -0.2], [0, -0.7], [2.5, 2.5], [-4, 3]], np.float64)
  expected = _weighted_curve_log_prob(points, curve_points, log_w, 0.2)
  lp = np.asarray(toy.moons_log_prob(jnp.asarray(points)))
  np.testing.assert_allclose(lp, expected, rtol=1e-7, atol=1e-7)


def test_swissroll_matches_independent_quadrature(x64):
  def roll(t):
    return np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5.0

  curve_points, log_w = _simpson_curve_points(roll, 1.5 * math.pi, 4.5 * math.pi, 20_001)
  points = np.array([[0, 0], [-0.94, 0], [1, 1], [2.8, 0], [-2, -1], [0, -3.5], [3.9, 3.9]], np.float64)
  expected = _weighted_curve_log_prob(points, curve_points, log_w, 0.2)
  lp = np.asarray(toy.swissroll_log_prob(jnp.asarray(points)))
  np.testing.assert_allclose(lp, expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("fn, nodes", [(toy.moons_log_prob, 128), (toy.swissroll_log_prob, 512)])
def test_quadrature_converged_by_node_doubling(x64, fn, nodes):
  # Covers the support plus a wide margin; the default node count must be
  # converged to far better than 1e-4 relative in the density.
  g = np.linspace(-5.0, 5.0, 61)
  points = jnp.asarray(np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2))
  default = np.asarray(fn(points))
  doubled = np.asarray(fn(points, num_nodes=2 * nodes))
  np.testing.assert_allclose(default, np.asarray(fn(points, num_nodes=nodes)))
  assert np.max(np.abs(default - doubled)) < 1e-6


def test_checkerboard_squares():
  inside = [[1.0, 1.0], [-1.0, -1.0], [3.0, 3.0], [-3.0, 1.0], [0.0, 0.0], [-4.0, -4.0], [3.99, -0.01]]
  outside = [[-1.0, 1.0], [1.0, -1.0], [3.0, 1.0], [4.5, 0.0], [0.0, 4.0], [4.0, 4.0], [-4.01, -3.0]]
  lp = np.asarray(toy.checkerboard_log_prob(jnp.array(inside + outside)))
  np.testing.assert_array_equal(lp[: len(inside)], np.full(len(inside), -math.log(32.0), np.float32))
  assert np.all(lp[len(inside) :] == -np.inf)


# ----------------------------------------------------------------------------
# Conventions of the datasets without a density.


def test_pinwheel_moments_and_chirality():
  x = _samples("pinwheel").astype(np.float64)
  r2 = np.sum(x**2, axis=-1)
  # Rotations preserve the norm: E|x|^2 = 4 (1 + 0.3^2 + 0.1^2) = 4.4.
  assert abs(r2.mean() - 4.4) < 4 * r2.std() / math.sqrt(len(x))
  # The reference rotates clockwise: polar angle ~ -(2πk/5 + 0.25 exp(f0)),
  # f0 ≈ |x|/2, so 5 (phi + 0.25 exp(|x|/2)) concentrates at 0 mod 2π.
  phi = np.arctan2(x[:, 1], x[:, 0])
  spin = 0.25 * np.exp(np.sqrt(r2) / 2.0)
  assert np.mean(np.cos(5.0 * (phi + spin))) > 0.7
  assert abs(np.mean(np.cos(5.0 * (phi - spin)))) < 0.3


def test_2spirals_moments():
  x = _samples("2spirals").astype(np.float64)
  big_t = 3.0 * math.pi
  # t = sqrt(U) * 3π has density 2t / (3π)^2 on [0, 3π]; jitter U1, U2 ~ U(0, 0.5).
  cross, _ = scipy.integrate.quad(lambda t: t * (math.sin(t) - math.cos(t)) * 2 * t / big_t**2, 0.0, big_t)
  mean_sq_d = big_t**2 / 2 + 0.5 * cross + 2 * 0.25 / 3
  expected = mean_sq_d / 9.0 + 2 * 0.1**2
  r2 = np.sum(x**2, axis=-1)
  assert abs(r2.mean() - expected) < 4 * r2.std() / math.sqrt(len(x))
  # The two spirals are point reflections of each other: mean zero.
  assert np.all(np.abs(x.mean(axis=0)) < 4 * x.std(axis=0) / math.sqrt(len(x)))


def test_x64_not_left_enabled():
  assert not jax.config.jax_enable_x64
