"""Importance-weighted log Z: the generator's change-of-variables density and the K-sample
bound, against Gaussian closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from bdbounds import bounds
from tests.bounds import generators


def test_generator_log_density_of_an_affine_map_is_the_gaussian_density(x64):
  a = jnp.array([[1.5, 0.3], [-0.4, 0.7]])
  b = jnp.array([0.2, -1.0])
  fn = lambda z: a @ z + b
  for seed in range(3):
    z = jax.random.normal(jax.random.PRNGKey(seed), (2,))
    log_q, x = bounds.generator_log_density(fn, z, with_output=True)
    np.testing.assert_allclose(x, fn(z), rtol=1e-12)
    expected = scipy.stats.multivariate_normal(np.asarray(b), np.asarray(a @ a.T)).logpdf(np.asarray(x))
    np.testing.assert_allclose(log_q, expected, rtol=1e-10)


def test_generator_log_density_integrates_to_one_for_an_mlp(x64):
  """For an injective 2-D map, ∫ q = E_z[1] is trivial; instead check E_q[1/q · p] = 1 for a
  known p by importance sampling: the density must be right everywhere q puts mass."""
  params = generators.init_mlp(jax.random.PRNGKey(0), [2, 8, 2])
  fn = lambda z: z + 0.1 * jnp.tanh(generators.mlp(params)(z))  # a contraction-perturbed identity: injective
  z = jax.random.normal(jax.random.PRNGKey(1), (20_000, 2))
  log_q, x = jax.vmap(lambda z: bounds.generator_log_density(fn, z, with_output=True))(z)
  log_p = jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(2), 2.0 * jnp.eye(2))
  estimate = jnp.mean(jnp.exp(log_p - log_q))
  standard_error = jnp.std(jnp.exp(log_p - log_q)) / math.sqrt(z.shape[0])
  assert abs(estimate - 1.0) < 4 * standard_error + 1e-3


def test_the_estimate_is_exact_when_the_proposal_is_the_model(x64):
  """E = −log q + c gives every weight e^{−c}: log Ẑ_K = −c = log Z for any K, ESS = 1."""
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 2))
  log_q = jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(2), jnp.eye(2))
  log_z, ess = bounds.importance_log_partition(-log_q + 0.8, log_q)
  np.testing.assert_allclose(log_z, -0.8, rtol=1e-12)
  np.testing.assert_allclose(ess, 1.0, rtol=1e-12)


def test_k_sample_bound_lies_between_the_gibbs_bound_and_log_z(x64):
  """q = N(0, s²), E = x²/2 (Z = √(2π)): E[log Ẑ_1] = E_q[−E] + H(q) ≤ E[log Ẑ_4] ≤ E[log Ẑ_64] ≤ log Z."""
  s = 1.8
  log_z = 0.5 * math.log(2 * math.pi)
  gibbs = -0.5 * s**2 + 0.5 * math.log(2 * math.pi * math.e * s**2)
  means = {}
  for k in (1, 4, 64):
    x = s * jax.random.normal(jax.random.PRNGKey(k), (20_000, k))
    log_q = -0.5 * (x / s) ** 2 - 0.5 * math.log(2 * math.pi * s**2)
    estimates, _ = jax.vmap(bounds.importance_log_partition)(0.5 * x**2, log_q)
    means[k] = (float(jnp.mean(estimates)), float(jnp.std(estimates)) / math.sqrt(x.shape[0]))
  assert abs(means[1][0] - gibbs) < 4 * means[1][1]
  assert means[1][0] < means[4][0] < means[64][0] < log_z
  assert log_z - means[64][0] < 0.1 * (log_z - gibbs)


def test_gradient_is_minus_the_self_normalised_weights(x64):
  energies = jnp.array([0.3, -1.2, 2.0, 0.1])
  log_q = jnp.array([-1.0, -0.5, -2.2, -1.7])
  grad = jax.grad(lambda e: bounds.importance_log_partition(e, log_q)[0])(energies)
  np.testing.assert_allclose(grad, -jax.nn.softmax(-energies - log_q), rtol=1e-12)
  ess = bounds.importance_log_partition(energies, log_q)[1]
  w = jax.nn.softmax(-energies - log_q)
  np.testing.assert_allclose(ess, 1 / (4 * jnp.sum(w**2)), rtol=1e-12)
  assert 0.25 <= ess <= 1.0


def test_density_and_score_in_one_pass_match_the_separate_ones(x64):
  params = generators.init_mlp(jax.random.PRNGKey(3), [2, 8, 2])
  fn = lambda z: z + 0.1 * jnp.tanh(generators.mlp(params)(z))
  z = jax.random.normal(jax.random.PRNGKey(4), (2,))
  log_q, score, out = bounds.generator_log_density_and_score(fn, z)
  np.testing.assert_allclose(log_q, bounds.generator_log_density(fn, z), rtol=1e-10)
  np.testing.assert_allclose(score, jax.grad(lambda z: bounds.generator_log_density(fn, z))(z), rtol=1e-9)
  np.testing.assert_allclose(out, fn(z), rtol=1e-12)


def test_data_kernel_proposal_reports_the_density_it_samples_from(x64):
  """Its log-density is the mixture over reference points and scales (checked term by term with
  SciPy), and it is the density of its draws: E_{q₀}[p/q₀] = 1 for a normalised p."""
  reference = jnp.array([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0], [2.0, -1.0]])
  scales = (0.1, 1.0)
  x, log_q = bounds.data_kernel_proposal(jax.random.PRNGKey(0), reference, 40_000, scales=scales)
  h = np.asarray(scales) * np.mean(np.std(np.asarray(reference), axis=0)) + 1e-6
  expected = np.log(np.mean([scipy.stats.multivariate_normal(c, w**2 * np.eye(2)).pdf(np.asarray(x[:50]))
                             for c in np.asarray(reference) for w in h], axis=0))
  np.testing.assert_allclose(log_q[:50], expected, rtol=1e-6)
  ratio = np.exp(scipy.stats.multivariate_normal([2.0, 2.0], 4.0 * np.eye(2)).logpdf(np.asarray(x)) - log_q)
  assert abs(np.mean(ratio) - 1.0) < 4 * np.std(ratio) / math.sqrt(len(ratio))


def test_defensive_samples_count_what_the_generator_misses(x64):
  """p ∝ e^{−E} with unit-mass modes at 0 and 4 (Z = 2); the "generator" q = N(0, 0.5²) all but
  never reaches 4, so Ẑ_K from it alone sees Z = 1. Pooling K₀ = K draws from the kernel density
  around data from both modes counts the missed mode with weight K₀/(K + K₀): the pooled
  mean is (K·1 + K₀·2)/(K + K₀) = 1.5, and the q₀ part alone is unbiased."""
  energy = lambda x: -jnp.logaddexp(jax.scipy.stats.norm.logpdf(x[..., 0], 0.0, 0.3),
                                    jax.scipy.stats.norm.logpdf(x[..., 0], 4.0, 0.3))
  data = jnp.array([[0.0], [4.0], [0.1], [3.9]])

  def estimates(key):
    q_key, d_key = jax.random.split(key)
    x = 0.5 * jax.random.normal(q_key, (64, 1))
    energies, log_q = energy(x), jax.scipy.stats.norm.logpdf(x[:, 0], 0.0, 0.5)
    x0, log_q0 = bounds.data_kernel_proposal(d_key, data, 64)
    energies0 = energy(x0)
    pooled = bounds.importance_log_partition(jnp.concatenate([energies, energies0]),
                                             jnp.concatenate([log_q, log_q0]))[0]
    return (bounds.importance_log_partition(energies, log_q)[0],
            bounds.importance_log_partition(energies0, log_q0)[0], pooled)

  alone, defensive, pooled = (np.exp(np.asarray(e)) for e in
                              jax.vmap(estimates)(jax.random.split(jax.random.PRNGKey(0), 4000)))
  for values, expected in ((alone, 1.0), (defensive, 2.0), (pooled, 1.5)):
    assert abs(np.mean(values) - expected) < 4 * np.std(values) / math.sqrt(len(values)) + 1e-3


@pytest.mark.parametrize("s", [1.0, 1.5, 3.0])
def test_chi_square_bound_matches_its_closed_form_and_lies_above_log_z(s, x64):
  """E = x²/2 (log Z = ½ log 2π), q₀ = N(0, s²): E_q0[w²] = 2π s / √(2 − 1/s²), equal to Z² at s = 1."""
  x = s * jax.random.normal(jax.random.PRNGKey(0), (200_000,))
  log_q = -0.5 * (x / s) ** 2 - 0.5 * math.log(2 * math.pi * s**2)
  bound, stderr, ess = bounds.chi2_log_partition_bound(0.5 * x**2, log_q)
  expected = 0.5 * math.log(2 * math.pi * s / math.sqrt(2 - 1 / s**2))
  assert abs(bound - expected) < 4 * stderr + 1e-9
  assert expected >= 0.5 * math.log(2 * math.pi) - 1e-12 and 0 < ess <= 1
  if s == 1.0:
    assert stderr < 1e-9 and ess == pytest.approx(1.0)


def test_the_pooled_estimate_with_defensive_samples_is_no_upper_bound(x64):
  """q = p_θ = N(0, 1), so KL(q ‖ p_θ) = 0 and E_q[−E] + H(q) = log Z: the Gibbs upper bound
  E_data[E] + E_q[−E] + H(q) + KL is the NLL itself. Pooling K = 200 such proposals with
  K₀ = 400 from N(0.5, 0.3²) keeps E[Ẑ] = Z, hence E log Ẑ ≤ log Z by Jensen, and here E log Ẑ is
  0.2 nats BELOW log Z: E_data[E] + log Ẑ_pool + KL_ub under-states the NLL (docs/bounds.md §1.4)."""
  log_z = 0.5 * math.log(2 * math.pi)
  def one(key):
    q_key, d_key = jax.random.split(key)
    x = jax.random.normal(q_key, (200,))
    x0 = 0.5 + 0.3 * jax.random.normal(d_key, (400,))
    log_q = jnp.concatenate([jax.scipy.stats.norm.logpdf(x), jax.scipy.stats.norm.logpdf(x0, 0.5, 0.3)])
    return bounds.importance_log_partition(0.5 * jnp.concatenate([x, x0]) ** 2, log_q)[0]
  estimates = jax.vmap(one)(jax.random.split(jax.random.PRNGKey(0), 4000))
  mean, stderr = float(jnp.mean(estimates)), float(jnp.std(estimates)) / math.sqrt(estimates.shape[0])
  assert stderr < 0.005
  assert mean < log_z - 0.15          # measured 0.72 against log Z = 0.919
  assert abs(mean - 0.721) < 0.02
