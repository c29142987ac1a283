"""Tests for grid quadrature of log Z, NLL and KL (bdbounds.metrics.quadrature and density)."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds.metrics import (
  adaptive_log_partition,
  density_on_grid,
  kl_data_model,
  kl_data_model_mc,
  log_density_fn,
  log_partition_on_grid,
  nll,
)

LOG_2PI = math.log(2.0 * math.pi)


def std_gaussian_energy(x):
  return 0.5 * jnp.sum(x**2, axis=-1)


def gaussian_energy(mean, std):
  """Unnormalised isotropic Gaussian energy; log Z = log(2 pi std^2)."""
  mean = jnp.asarray(mean)

  def energy(x):
    return 0.5 * jnp.sum((x - mean.astype(x.dtype)) ** 2, axis=-1) / std**2

  return energy, math.log(2.0 * math.pi * std**2)


def gaussian_log_prob(mean, std):
  """Normalised log density of N(mean, diag(std^2)) in 2-D."""
  mean = np.asarray(mean, dtype=np.float64)
  std = np.broadcast_to(np.asarray(std, dtype=np.float64), (2,))

  def log_prob(x):
    z = (jnp.asarray(x) - mean) / std
    return -0.5 * jnp.sum(z**2, axis=-1) - LOG_2PI - float(np.sum(np.log(std)))

  return log_prob


def gaussian_kl(mu1, s1, mu2, s2):
  """KL(N(mu1, diag(s1^2)) || N(mu2, s2^2 I)) in 2-D."""
  mu1, mu2 = np.asarray(mu1, float), np.asarray(mu2, float)
  s1 = np.broadcast_to(np.asarray(s1, float), (2,))
  return float(np.sum(np.log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - 0.5))


# 25 isotropic Gaussian modes of std 0.0177 on a 5x5 lattice spanning [-1.41, 1.41]^2.
MODE_STD = 0.0177
MODE_CENTRES = np.array([(2 * i / 2.828, 2 * j / 2.828) for i in range(-2, 3) for j in range(-2, 3)])
MODES_LOG_Z = math.log(25 * 2 * math.pi * MODE_STD**2)


def modes_energy(x):
  # exp(-E) = sum_k exp(-|x - c_k|^2 / (2 s^2)) integrates to 25 * 2 pi s^2.
  c = jnp.asarray(MODE_CENTRES, dtype=x.dtype)
  sq = jnp.sum((x[:, None, :] - c[None]) ** 2, axis=-1)
  return -jax.nn.logsumexp(-sq / (2 * MODE_STD**2), axis=1)


@pytest.fixture(scope="module")
def modes_data():
  rng = np.random.default_rng(0)
  k = rng.integers(0, 25, size=2000)
  return MODE_CENTRES[k] + MODE_STD * rng.standard_normal((2000, 2))


# ---------------------------------------------------------------------------
# log Z


def test_standard_gaussian_log_partition_float64():
  x64_before = jax.config.jax_enable_x64
  with jax.enable_x64(True):
    lz = log_partition_on_grid(std_gaussian_energy, -12.0, 12.0, 256)
    assert abs(lz - LOG_2PI) < 1e-6
    # Adaptive, with a tight tolerance: box and resolution must follow it.
    res = adaptive_log_partition(std_gaussian_energy, lo=(-1.0, -1.0), hi=(1.0, 1.0), tol=1e-7)
  assert res.converged
  assert res.error_estimate < 1e-7
  assert abs(res.log_z - LOG_2PI) < 1e-6
  assert abs(res.log_z - LOG_2PI) <= res.error_estimate + 1e-12
  assert jax.config.jax_enable_x64 == x64_before  # the flag is restored


def test_truncated_box_integral_float64():
  # E = -(x + 2y) on [0, 1] x [-1, 2]: the box truncates the integrand, so this
  # checks cell centres, cell area and which grid axis is x.
  exact = math.log((math.e - 1.0) * (math.exp(4.0) - math.exp(-2.0)) / 2.0)
  with jax.enable_x64(True):
    lz = log_partition_on_grid(
      lambda x: -(x[:, 0] + 2.0 * x[:, 1]), (0.0, -1.0), (1.0, 2.0), 512, chunk_size=5000
    )
  # Midpoint-rule error ~ h^2/24 * (1 + 4 * 9) relative: ~6e-6 here.
  assert abs(lz - exact) < 1e-5


def test_chunking_does_not_change_result():
  energy, _ = gaussian_energy((0.3, -0.2), 0.7)
  a = log_partition_on_grid(energy, (-4.0, -3.0), (3.0, 5.0), 97)
  b = log_partition_on_grid(energy, (-4.0, -3.0), (3.0, 5.0), 97, chunk_size=1000)
  assert abs(a - b) < 1e-5


def test_energy_with_trailing_unit_axis_is_accepted():
  lz = log_partition_on_grid(lambda x: std_gaussian_energy(x)[:, None], -10.0, 10.0, 128)
  assert abs(lz - LOG_2PI) < 1e-4


def test_sharp_modes_converge(modes_data):
  res = adaptive_log_partition(modes_energy, modes_data)
  assert res.converged
  assert res.error_estimate < 1e-3
  assert abs(res.log_z - MODES_LOG_Z) < 1e-3
  # The grid must actually resolve modes of std 0.0177.
  assert (res.hi[0] - res.lo[0]) / res.resolution < 1.5 * MODE_STD
  assert np.all(np.asarray(res.lo) < modes_data.min(0))
  assert np.all(np.asarray(res.hi) > modes_data.max(0))
  assert res.history[-1] == (res.resolution, res.log_z)


def test_too_coarse_max_resolution_is_not_converged(modes_data):
  res = adaptive_log_partition(modes_energy, modes_data, max_resolution=128)
  assert not res.converged
  assert res.resolution <= 128
  assert res.error_estimate > 1e-3


def test_broad_energy_grows_box():
  energy, log_z = gaussian_energy((3.0, -2.0), 5.0)
  data = np.random.default_rng(1).uniform(-1.0, 1.0, size=(500, 2))
  res = adaptive_log_partition(energy, data)
  assert res.converged
  assert res.error_estimate < 1e-3
  assert abs(res.log_z - log_z) < 1e-3
  # Mass reaches ~5 std from the mean in every direction.
  assert res.lo[0] < 3.0 - 20.0 and res.hi[0] > 3.0 + 20.0
  assert res.lo[1] < -2.0 - 20.0 and res.hi[1] > -2.0 + 20.0


def test_non_normalisable_energy_is_not_converged():
  flat = lambda x: jnp.zeros(x.shape[0])  # noqa: E731
  res = adaptive_log_partition(flat, lo=(-1.0, -1.0), hi=(1.0, 1.0), max_growths=4)
  assert not res.converged
  assert res.error_estimate > 1e-3


def test_nan_energy_is_not_converged():
  bad = lambda x: jnp.full(x.shape[0], jnp.nan)  # noqa: E731
  res = adaptive_log_partition(bad, lo=(-1.0, -1.0), hi=(1.0, 1.0))
  assert not res.converged
  assert math.isnan(res.log_z)


# ---------------------------------------------------------------------------
# Probes: mass the grid does not resolve

SPIKE_CENTRE = np.array([0.5, -0.3])
SPIKE_STD = 2e-4  # far below any grid's cell (~0.08 at the resolution the smooth part needs)
SPIKE_WEIGHT = 0.3


def spike_mixture_energy(centre=SPIKE_CENTRE, std=SPIKE_STD, weight=SPIKE_WEIGHT):
  """Energy of the normalised density (1 - weight) N(0, I) + weight N(centre, std^2 I): log Z = 0."""
  centre = np.asarray(centre, dtype=np.float64)

  def energy(x):
    broad = -0.5 * jnp.sum(x**2, axis=-1) - LOG_2PI + math.log(1.0 - weight)
    sq = jnp.sum((x - jnp.asarray(centre, x.dtype)) ** 2, axis=-1)
    spike = -0.5 * sq / std**2 - math.log(2.0 * math.pi * std**2) + math.log(weight)
    return -jnp.logaddexp(broad, spike)

  return energy


@pytest.fixture(scope="module")
def broad_data():
  return np.random.default_rng(0).standard_normal((2000, 2))


def test_spike_between_grid_nodes_is_invisible_without_probes(broad_data):
  # The blind spot probes are for: no node of any grid comes near the spike, so successive grids
  # agree on the broad component alone and certify log(0.7) instead of 0.  Pinned so that a change
  # here is noticed; nothing guarantees it (a node could land on the spike).
  res = adaptive_log_partition(spike_mixture_energy(), broad_data)
  assert res.converged
  assert abs(res.log_z - math.log(1.0 - SPIKE_WEIGHT)) < 1e-3
  assert res.refined_probes == 0 and res.probe_max_neg_energy == -math.inf and res.local_correction == 0.0


def test_spike_at_a_probe_is_integrated(broad_data):
  probes = np.concatenate([broad_data, SPIKE_CENTRE[None]])
  res = adaptive_log_partition(spike_mixture_energy(), broad_data, probes=probes)
  assert res.converged, res.reason
  assert res.reason == ""
  assert abs(res.log_z) < 1e-3
  assert abs(res.log_z) <= res.error_estimate < 1e-3
  # The plain grid misses the spike; the probe's -E towers over every node.
  assert abs(res.history[-1][1] - math.log(1.0 - SPIKE_WEIGHT)) < 1e-3
  assert res.local_correction == pytest.approx(res.log_z - res.history[-1][1])
  assert res.probe_max_neg_energy > res.grid_max_neg_energy + 10.0
  assert res.max_probe_excess > 10.0
  assert res.refined_probes == 1 and res.refined_cells > 0


def test_probes_clustered_in_the_spike_are_not_double_counted():
  # Probes drawn from the mixture itself: ~600 of them inside the spike share the refined cells.
  rng = np.random.default_rng(1)
  in_spike = rng.uniform(size=2000) < SPIKE_WEIGHT
  x = np.where(in_spike[:, None], SPIKE_CENTRE + SPIKE_STD * rng.standard_normal((2000, 2)),
               rng.standard_normal((2000, 2)))
  res = adaptive_log_partition(spike_mixture_energy(), x, probes=x)
  assert res.converged, res.reason
  assert abs(res.log_z) < 1e-3
  assert res.refined_probes > 100


@pytest.mark.parametrize("std", [2e-3, 2e-5])
@pytest.mark.parametrize("offset", [0.0, 0.7])
def test_spike_float64_follows_tol(broad_data, std, offset):
  # A probe on the spike's flank (offset in spike widths) still leads to it; tol is followed.
  probes = np.concatenate([broad_data, (SPIKE_CENTRE + offset * std)[None]])
  with jax.enable_x64(True):
    res = adaptive_log_partition(spike_mixture_energy(std=std), broad_data, probes=probes, tol=1e-4)
  assert res.converged, res.reason
  assert abs(res.log_z) <= res.error_estimate < 1e-4


def test_spike_outside_the_box_at_a_probe(broad_data):
  # The box (data +- 25%, tails of N(0, I)) ends near 5.5: a spike at (7, 7) lies beyond it,
  # cut off from the box by negligible density, so only its probe can bring it in.  (Out there
  # float32 resolves 2e-3, 40 times narrower than a cell, but not 2e-4: not converged then.)
  energy = spike_mixture_energy(centre=(7.0, 7.0), std=2e-3)
  assert abs(adaptive_log_partition(energy, broad_data).log_z - math.log(1.0 - SPIKE_WEIGHT)) < 1e-3
  res = adaptive_log_partition(energy, broad_data, probes=np.concatenate([broad_data, [[7.0, 7.0]]]))
  assert res.hi[0] < 7.0 and res.hi[1] < 7.0
  assert res.converged, res.reason
  assert abs(res.log_z) < 1e-3


def test_spike_refinement_out_of_budget_is_not_converged(broad_data):
  # Never certified wrong: with too few cells or levels to resolve the spike, converged=False.
  probes = SPIKE_CENTRE[None]
  for limits, match in [({"max_refine_cells": 500}, "max_refine_cells=500"), ({"max_refine_levels": 3}, "1 probes")]:
    res = adaptive_log_partition(spike_mixture_energy(), broad_data, probes=probes, **limits)
    assert not res.converged
    assert match in res.reason and "local refinement stopped" in res.reason
  # float32 cannot resolve a spike this narrow (5e-6) to 1e-3: the noise of its rounding exceeds tol.
  res = adaptive_log_partition(spike_mixture_energy(std=5e-6), broad_data, probes=probes)
  assert res.converged is False or abs(res.log_z) < 1e-3


GAUSS_WEIGHTS = np.array([0.5, 0.3, 0.2])
GAUSS_MEANS = np.array([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]])
GAUSS_STDS = np.array([0.6, 0.3, 1.0])


def gauss_mixture_energy(x):
  """Energy of a normalised mixture of three isotropic Gaussians: log Z = 0."""
  sq = jnp.sum((x[:, None, :] - jnp.asarray(GAUSS_MEANS, x.dtype)) ** 2, axis=-1)
  log_w = jnp.asarray(np.log(GAUSS_WEIGHTS / (2 * math.pi * GAUSS_STDS**2)), x.dtype)
  return -jax.nn.logsumexp(-sq / (2 * jnp.asarray(GAUSS_STDS, x.dtype) ** 2) + log_w, axis=1)


def test_smooth_mixture_with_probes_needs_no_refinement():
  rng = np.random.default_rng(5)
  k = rng.choice(3, size=5000, p=GAUSS_WEIGHTS)
  x = GAUSS_MEANS[k] + GAUSS_STDS[k, None] * rng.standard_normal((5000, 2))
  fake = 1.5 * rng.standard_normal((2000, 2))  # a poor generator: some samples beyond the box
  plain = adaptive_log_partition(gauss_mixture_energy, x)
  res = adaptive_log_partition(gauss_mixture_energy, x, probes=np.concatenate([x, fake]))
  assert res.converged, res.reason
  assert abs(res.log_z) < 1e-3
  assert res.log_z == plain.log_z and res.resolution == plain.resolution
  assert res.refined_probes == 0 and res.refined_cells == 0
  assert res.max_probe_excess < 1.0  # the default probe_margin
  assert res.probe_max_neg_energy <= res.grid_max_neg_energy + 1.0
  assert res.error_estimate < plain.error_estimate + 1e-6  # probes beyond the box add next to nothing


def test_sharp_modes_with_probes_need_no_refinement(modes_data):
  res = adaptive_log_partition(modes_energy, modes_data, probes=modes_data)
  assert res.converged, res.reason
  assert abs(res.log_z - MODES_LOG_Z) < 1e-3
  assert res.refined_probes == 0 and res.max_probe_excess < 1.0


def test_forced_refinement_of_a_smooth_energy_keeps_its_accuracy():
  # probe_margin=0 refines around probes that need nothing: the grid around the refined cells
  # loses the midpoint rule's cancellation at their edge (2e-4 here), which the interface term restores.
  with jax.enable_x64(True):
    res = adaptive_log_partition(std_gaussian_energy, lo=(-1.0, -1.0), hi=(1.0, 1.0), tol=1e-5,
                                 probes=[[0.3, 0.2], [-1.1, 0.4]], probe_margin=0.0)
  assert res.refined_probes == 2 and res.refined_cells > 0
  assert res.converged, res.reason
  assert abs(res.log_z - LOG_2PI) <= res.error_estimate < 1e-5


def test_not_converged_results_say_why(modes_data):
  res = adaptive_log_partition(modes_energy, modes_data, max_resolution=128)
  assert "max_resolution=128" in res.reason
  flat = lambda x: jnp.zeros(x.shape[0])  # noqa: E731
  assert "max_growths=4" in adaptive_log_partition(flat, lo=(-1.0, -1.0), hi=(1.0, 1.0), max_growths=4).reason
  nan = lambda x: jnp.full(x.shape[0], jnp.nan)  # noqa: E731
  assert "not finite" in adaptive_log_partition(nan, lo=(-1.0, -1.0), hi=(1.0, 1.0)).reason
  # An energy that is nan only at a probe: the grid cannot vouch for it.
  hole = lambda x: jnp.where(jnp.all(x == 0.25, axis=-1), jnp.nan, std_gaussian_energy(x))  # noqa: E731
  res = adaptive_log_partition(hole, lo=(-1.0, -1.0), hi=(1.0, 1.0), probes=[[0.25, 0.25]])
  assert not res.converged and "not finite at 1 of 1 probes" in res.reason


def test_probes_are_validated():
  with pytest.raises(ValueError, match="shape"):
    adaptive_log_partition(std_gaussian_energy, lo=-1.0, hi=1.0, probes=np.zeros((3, 3)))
  with pytest.raises(ValueError, match="non-finite"):
    adaptive_log_partition(std_gaussian_energy, lo=-1.0, hi=1.0, probes=[[0.0, np.nan]])
  res = adaptive_log_partition(std_gaussian_energy, lo=-1.0, hi=1.0, probes=np.zeros((0, 2)))
  assert res.converged and res.refined_probes == 0


# ---------------------------------------------------------------------------
# KL, NLL, densities


def test_kl_between_gaussians_matches_closed_form():
  mu1, s1 = (0.5, -0.3), (0.8, 1.3)
  mu2, s2 = (-0.2, 0.4), 1.1
  energy, log_z = gaussian_energy(mu2, s2)
  kl = kl_data_model(gaussian_log_prob(mu1, s1), energy, log_z, -12.0, 12.0, 512)
  assert abs(kl - gaussian_kl(mu1, s1, mu2, s2)) < 1e-4


def test_kl_with_adaptive_log_z_and_monte_carlo():
  mu1, s1 = (0.5, -0.3), (0.8, 1.3)
  mu2, s2 = (-0.2, 0.4), 1.1
  energy, _ = gaussian_energy(mu2, s2)
  rng = np.random.default_rng(2)
  samples = np.asarray(mu1) + np.asarray(s1) * rng.standard_normal((20000, 2))
  grid = adaptive_log_partition(energy, samples)
  assert grid.converged
  data_lp = gaussian_log_prob(mu1, s1)
  kl = kl_data_model(data_lp, energy, grid.log_z, grid.lo, grid.hi, grid.resolution)
  exact = gaussian_kl(mu1, s1, mu2, s2)
  assert abs(kl - exact) < 2e-3
  mc = kl_data_model_mc(data_lp, energy, grid.log_z, samples)
  assert abs(mc.value - exact) < 4 * mc.stderr + 2e-3


def test_kl_of_density_with_itself_is_zero():
  energy, log_z = gaussian_energy((0.2, 0.1), 0.9)
  kl = kl_data_model(gaussian_log_prob((0.2, 0.1), 0.9), energy, log_z, -10.0, 10.0, 256)
  assert abs(kl) < 1e-5


def test_kl_handles_data_density_with_bounded_support():
  # p_data uniform on [0, 1]^2 (log p = -inf outside), model N(0, I):
  # KL = E_U[|x|^2 / 2] + log 2 pi = 1/3 + log 2 pi.
  def uniform_log_prob(x):
    inside = jnp.all((x >= 0.0) & (x <= 1.0), axis=-1)
    return jnp.where(inside, 0.0, -jnp.inf)

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # grid mass of p_data must be ~1
    kl = kl_data_model(uniform_log_prob, std_gaussian_energy, LOG_2PI, -1.0, 2.0, 300)
  assert abs(kl - (1.0 / 3.0 + LOG_2PI)) < 1e-4
  samples = np.random.default_rng(3).uniform(0.0, 1.0, size=(20000, 2))
  mc = kl_data_model_mc(uniform_log_prob, std_gaussian_energy, LOG_2PI, samples)
  assert abs(mc.value - kl) < 4 * mc.stderr


def test_kl_warns_when_box_misses_data_mass():
  energy, log_z = gaussian_energy((0.0, 0.0), 1.0)
  with pytest.warns(RuntimeWarning, match="integrates to"):
    kl_data_model(gaussian_log_prob((0.0, 0.0), 1.0), energy, log_z, -1.0, 1.0, 64)


def test_nll_matches_cross_entropy():
  mu1, s1 = np.array([0.4, -0.6]), 0.7
  mu2, s2 = (0.0, 0.0), 1.2
  energy, _ = gaussian_energy(mu2, s2)
  x = mu1 + s1 * np.random.default_rng(4).standard_normal((20000, 2))
  grid = adaptive_log_partition(energy, x)
  assert grid.converged
  value = nll(energy, x, grid.log_z)
  cross_entropy = math.log(2 * math.pi * s2**2) + (2 * s1**2 + float(np.sum(mu1**2))) / (2 * s2**2)
  stderr = float(np.std(np.asarray(energy(jnp.asarray(x, jnp.float32))))) / math.sqrt(len(x))
  assert abs(value - cross_entropy) < 4 * stderr + grid.error_estimate + 1e-5


def test_density_on_grid_orientation_and_normalisation():
  energy, log_z = gaussian_energy((1.5, -0.5), 0.6)
  lo, hi = (-3.0, -4.0), (5.0, 3.0)
  xs, ys, logp = density_on_grid(energy, log_z, lo, hi, 200, chunk_size=3000)
  assert xs.shape == (200,) and ys.shape == (200,) and logp.shape == (200, 200)
  np.testing.assert_allclose(xs[[0, -1]], [-3.0 + 0.02, 5.0 - 0.02])
  np.testing.assert_allclose(ys[[0, -1]], [-4.0 + 0.0175, 3.0 - 0.0175])
  iy, ix = np.unravel_index(np.argmax(logp), logp.shape)
  assert abs(xs[ix] - 1.5) < 0.03 and abs(ys[iy] + 0.5) < 0.03
  log_p = log_density_fn(energy, log_z)
  pts = np.array([[xs[17], ys[123]], [xs[150], ys[3]]])
  expected = logp[[123, 3], [17, 150]]
  np.testing.assert_allclose(np.asarray(log_p(jnp.asarray(pts, jnp.float32))), expected, rtol=1e-5)
  cell = (8.0 / 200) * (7.0 / 200)
  assert abs(np.exp(logp).sum() * cell - 1.0) < 1e-4
