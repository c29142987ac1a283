"""Diffusion bound with the exact diffused energy of Gaussian and Gaussian-mixture data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import bounds

RANGES = [(-6.0, 3.0), (-13.3, 5.0), (-20.0, 10.0)]


def diffused_mixture_energy(means, std):
  """E(z, t) = −log p_t(z) for data Σ_k (1/K) N(μ_k, s² I), with the linear γ schedule."""
  def make(gamma_min, gamma_max):
    def energy(z, t):
      gamma = gamma_min + (gamma_max - gamma_min) * t
      alpha2, sigma2 = jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)
      var = alpha2 * std**2 + sigma2
      sq = jnp.sum(jnp.square(z - jnp.sqrt(alpha2) * means), axis=1)
      log_comp = -0.5 * sq / var - 0.5 * z.size * jnp.log(2 * jnp.pi * var)
      return -(jax.nn.logsumexp(log_comp) - math.log(means.shape[0]))
    return energy
  return make


def expected_gaussian_bound(mean, std, gamma_min, gamma_max):
  """E_data[total] in closed form for data N(μ, s² I) and the exact diffused energy.

  Per dimension E‖ε − ε̂‖² = α² s² / (α² s² + σ²), and ∫ s²/(s² + e^γ) dγ = γ − log(s² + e^γ).
  """
  dim = mean.size
  recon = 0.5 * dim * (math.log(2 * math.pi) + 1 + gamma_min)
  var_1 = 1 / (1 + math.exp(-gamma_max))
  prior = 0.5 * (dim * (var_1 - 1 - math.log(var_1)) + (1 - var_1) * (np.sum(mean**2) + dim * std**2))
  antiderivative = lambda g: g - math.log(std**2 + math.exp(g))
  diffusion = 0.5 * dim * (antiderivative(gamma_max) - antiderivative(gamma_min))
  return recon + prior + diffusion


def batch_bound(energy, x, key, **kwargs):
  keys = jax.random.split(key, x.shape[0])
  return jax.jit(jax.vmap(lambda x, k: bounds.diffusion_nll_bound(energy, x, key=k, **kwargs)))(x, keys)


@pytest.mark.parametrize("sampling", ["stratified", "antithetic", "uniform"])
def test_gaussian_data_matches_closed_form_and_upper_bounds_entropy(sampling, x64):
  mean, std = np.array([0.5, -0.3]), 0.4
  entropy = 0.5 * mean.size * math.log(2 * math.pi * math.e * std**2)
  x = mean + std * jax.random.normal(jax.random.PRNGKey(0), (4000, 2))
  make_energy = diffused_mixture_energy(jnp.asarray(mean)[None], std)
  gaps = []
  for gamma_min, gamma_max in RANGES:
    expected = expected_gaussian_bound(mean, std, gamma_min, gamma_max)
    assert expected >= entropy
    gaps.append(expected - entropy)
    terms = batch_bound(make_energy(gamma_min, gamma_max), x, jax.random.PRNGKey(1), num_t=8,
                        gamma_min=gamma_min, gamma_max=gamma_max, sampling=sampling)
    np.testing.assert_allclose(terms.total, terms.recon + terms.prior + terms.diffusion, rtol=1e-9, atol=1e-9)
    se = float(jnp.std(terms.total)) / np.sqrt(x.shape[0])
    # A wrong sign or weight in any term moves the mean by far more than 4 standard errors.
    assert abs(float(jnp.mean(terms.total)) - expected) < 4 * se + 1e-3, (gamma_min, gamma_max)
  assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_mixture_data_bound_exceeds_entropy_and_tightens(x64):
  means = jnp.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]])
  std = 0.2
  make_energy = diffused_mixture_energy(means, std)
  key_c, key_n, key_b = jax.random.split(jax.random.PRNGKey(2), 3)
  x = means[jax.random.randint(key_c, (4000,), 0, 3)] + std * jax.random.normal(key_n, (4000, 2))
  neg_log_p = -jax.vmap(lambda x: jax.nn.logsumexp(jax.scipy.stats.multivariate_normal.logpdf(
      x, means, std**2 * jnp.eye(2))) - math.log(3))(x)
  gaps, errors = [], []
  for gamma_min, gamma_max in [(-4.0, 2.0), (-13.3, 8.0)]:
    terms = batch_bound(make_energy(gamma_min, gamma_max), x, key_b, num_t=16,
                        gamma_min=gamma_min, gamma_max=gamma_max)
    # Paired with the same data: the per-example gap to −log p_data(x) has small variance.
    gap = terms.total - neg_log_p
    mean_gap, se = float(jnp.mean(gap)), float(jnp.std(gap)) / np.sqrt(x.shape[0])
    assert mean_gap > -4 * se
    gaps.append(mean_gap)
    errors.append(se)
  # The gap shrinks as the log-SNR range widens, and is then consistent with zero.
  assert gaps[1] < gaps[0] - 4 * (errors[0] + errors[1])
  assert gaps[1] < 4 * errors[1] + 0.01


def test_shapes_and_finiteness(variant):
  energy = lambda z, t: 0.5 * jnp.sum(z**2) * (1 + t)
  image = jnp.zeros((4, 4, 3))
  terms = variant(lambda k: bounds.diffusion_nll_bound(energy, image, key=k, num_t=4,
                                                            gamma_min=-13.3, gamma_max=5.0))(jax.random.PRNGKey(0))
  for term in terms:
    assert term.shape == () and np.isfinite(term)
  with pytest.raises(ValueError, match="even"):
    bounds.sample_times(jax.random.PRNGKey(0), 3, "antithetic")
  with pytest.raises(ValueError, match="stratified"):
    bounds.sample_times(jax.random.PRNGKey(0), 3, "sobol")


def test_time_samplers_are_uniform_marginally():
  for sampling in ("stratified", "antithetic", "uniform"):
    times = jax.vmap(lambda k: bounds.sample_times(k, 4, sampling))(
        jax.random.split(jax.random.PRNGKey(0), 5000)).ravel()
    assert float(times.min()) >= 0 and float(times.max()) < 1
    counts, _ = np.histogram(np.asarray(times), bins=10, range=(0, 1))
    assert np.all(np.abs(counts / times.size - 0.1) < 0.01), sampling
