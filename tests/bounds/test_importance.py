"""Importance-weighted log Z: the generator's change-of-variables density and the K-sample
bound, against Gaussian closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
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
