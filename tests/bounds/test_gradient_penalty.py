"""Log-Sobolev bounds with a Gaussian EBM and Gaussian q, where everything is closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import bounds


def gaussian_kl(m_q, s_q, m_p, s_p):
  """KL(N(m_q, S_q) ‖ N(m_p, S_p))."""
  p_inv = jnp.linalg.inv(s_p)
  diff = m_p - m_q
  dim = m_q.shape[0]
  return 0.5 * (jnp.trace(p_inv @ s_q) + diff @ p_inv @ diff - dim
                + jnp.linalg.slogdet(s_p)[1] - jnp.linalg.slogdet(s_q)[1])


def relative_fisher(m_q, s_q, m_p, s_p):
  """E_q ‖∇log q − ∇log p‖² = tr((P − Q) S_q (P − Q)) + ‖P (m_q − m_p)‖², P = S_p⁻¹, Q = S_q⁻¹."""
  p_inv, q_inv = jnp.linalg.inv(s_p), jnp.linalg.inv(s_q)
  diff = p_inv - q_inv
  return jnp.trace(diff @ s_q @ diff) + jnp.sum(jnp.square(p_inv @ (m_q - m_p)))


@pytest.fixture
def gaussians(x64):
  m_p = jnp.array([0.5, -1.0, 0.0])
  s_p = jnp.array([[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]])
  m_q = jnp.array([1.0, 0.0, -0.5])
  s_q = jnp.array([[1.0, -0.1, 0.2], [-0.1, 0.6, 0.0], [0.2, 0.0, 0.8]])
  p_inv = jnp.linalg.inv(s_p)
  energy = lambda x: 0.5 * (x - m_p) @ p_inv @ (x - m_p)
  return m_p, s_p, m_q, s_q, energy


def sample_q(m_q, s_q, n, key):
  return m_q + jax.random.normal(key, (n, m_q.shape[0])) @ jnp.linalg.cholesky(s_q).T


def test_lsi_bound_holds_and_mc_matches_closed_form(gaussians):
  m_p, s_p, m_q, s_q, energy = gaussians
  c = float(jnp.max(jnp.linalg.eigvalsh(s_p)))
  kl, fisher = gaussian_kl(m_q, s_q, m_p, s_p), relative_fisher(m_q, s_q, m_p, s_p)
  assert kl <= 0.5 * c * fisher
  x = sample_q(m_q, s_q, 20_000, jax.random.PRNGKey(0))
  score_q = -(x - m_q) @ jnp.linalg.inv(s_q)
  per_example = jax.vmap(lambda x, s: bounds.lsi_kl_upper_bound(energy, x, s, lsi_constant=c))(x, score_q)
  se = 4 * jnp.std(per_example) / np.sqrt(x.shape[0])
  assert abs(jnp.mean(per_example) - 0.5 * c * fisher) < se


def test_lsi_constant_is_sharp_for_a_mean_shift_along_the_top_eigenvector(x64):
  # q = p shifted by δ·u_max: KL = δ²/(2 c) and the relative Fisher information is δ²/c², so
  # (C/2)·FI = KL exactly at C = λ_max(Σ); any smaller constant breaks the inequality.
  s_p = jnp.diag(jnp.array([3.0, 1.0]))
  m_q = jnp.array([0.7, 0.0])
  kl = gaussian_kl(m_q, s_p, jnp.zeros(2), s_p)
  fisher = relative_fisher(m_q, s_p, jnp.zeros(2), s_p)
  np.testing.assert_allclose(0.5 * 3.0 * fisher, kl, rtol=1e-12)
  assert 0.5 * 2.9 * fisher < kl


def test_score_matching_identity(gaussians):
  m_p, s_p, m_q, s_q, energy = gaussians
  p_inv, q_inv = jnp.linalg.inv(s_p), jnp.linalg.inv(s_q)
  # Closed form: E_q[‖∇E‖² − 2ΔE] + J(q) equals the relative Fisher information.
  e_sm = jnp.trace(p_inv @ s_q @ p_inv) + jnp.sum(jnp.square(p_inv @ (m_q - m_p))) - 2 * jnp.trace(p_inv)
  fisher_q = jnp.trace(q_inv)
  np.testing.assert_allclose(e_sm + fisher_q, relative_fisher(m_q, s_q, m_p, s_p), rtol=1e-12)
  # The per-example term, with the exact Laplacian, is exactly ‖P(x − m)‖² − 2 tr P ...
  x = sample_q(m_q, s_q, 20_000, jax.random.PRNGKey(1))
  terms = jax.vmap(lambda x: bounds.score_matching_term(energy, x, exact=True))(x)
  expected = jnp.sum(jnp.square((x - m_p) @ p_inv), axis=1) - 2 * jnp.trace(p_inv)
  np.testing.assert_allclose(terms, expected, rtol=1e-10)
  # ... and its Monte-Carlo mean matches the closed form.
  assert abs(jnp.mean(terms) - e_sm) < 4 * jnp.std(terms) / np.sqrt(x.shape[0])


def test_hutchinson_laplacian(gaussians, variant):
  # A non-quadratic energy, so the Hessian varies with x and has off-diagonal entries.
  energy = lambda x: jnp.sum(jnp.tanh(x) ** 2) + x[0] * x[1] * x[2] + 0.5 * jnp.sum(x**2)
  x = jnp.array([0.3, -0.7, 1.1])
  exact = bounds.laplacian(energy, x, exact=True)
  np.testing.assert_allclose(exact, jnp.trace(jax.hessian(energy)(x)), rtol=1e-12)
  estimate = variant(lambda key: bounds.laplacian(energy, x, key=key, num_probes=20_000))
  assert abs(estimate(jax.random.PRNGKey(2)) - exact) < 0.05
  # For a diagonal Hessian every Rademacher probe is exact: εᵀDε = tr D.
  diagonal = lambda x: jnp.sum(jnp.cos(x))
  one_probe = bounds.laplacian(diagonal, x, key=jax.random.PRNGKey(3), num_probes=1)
  np.testing.assert_allclose(one_probe, -jnp.sum(jnp.cos(x)), rtol=1e-12)
  with pytest.raises(ValueError, match="key"):
    bounds.laplacian(energy, x)


def test_r1_penalty_and_image_shaped_inputs(gaussians):
  m_p, s_p, _, _, energy = gaussians
  x = jnp.array([0.1, 0.2, 0.3])
  np.testing.assert_allclose(bounds.r1_penalty(energy, x),
                             jnp.sum(jnp.square(jnp.linalg.inv(s_p) @ (x - m_p))), rtol=1e-12)
  image_energy = lambda img: 0.5 * jnp.sum(img**2)
  img = jnp.arange(12.0).reshape(2, 2, 3) / 10
  np.testing.assert_allclose(bounds.score_matching_term(image_energy, img, exact=True),
                             jnp.sum(img**2) - 2 * 12, rtol=1e-12)


def test_latent_fisher_penalty(x64):
  a = jnp.array([[1.0, 0.5], [-0.3, 0.8]])
  generator = lambda z: a @ z
  cov_inv = jnp.linalg.inv(a @ a.T)
  z = jnp.array([0.4, -1.2])
  latent_score = z  # ∇_z[½‖z‖² + ½ log det AᵀA]: the log-det is constant for a linear map.
  # When p_θ is exactly the law of G(z), the energy and q agree along every direction.
  matched = lambda x: 0.5 * x @ cov_inv @ x
  pen = bounds.latent_fisher_penalty(matched, generator, z, latent_score,
                                     key=jax.random.PRNGKey(0), num_probes=4)
  np.testing.assert_allclose(pen, 0.0, atol=1e-20)
  # Otherwise it is a Hutchinson estimate of ½‖Aᵀ∇E(G(z)) − s(z)‖².
  mismatched = lambda x: 0.5 * jnp.sum(x**2) + x[0]
  exact = 0.5 * jnp.sum(jnp.square(a.T @ jax.grad(mismatched)(generator(z)) - latent_score))
  pen = bounds.latent_fisher_penalty(mismatched, generator, z, latent_score,
                                     key=jax.random.PRNGKey(1), num_probes=50_000)
  np.testing.assert_allclose(pen, exact, rtol=0.03)
  # Only the energy trains: no gradient reaches the generator's parameters or the score.
  grads = jax.grad(lambda a, s: bounds.latent_fisher_penalty(
      mismatched, lambda z: a @ z, z, s, key=jax.random.PRNGKey(1)), argnums=(0, 1))(a, latent_score)
  assert all(np.all(g == 0) for g in grads)
