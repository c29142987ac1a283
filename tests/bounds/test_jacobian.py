"""Jacobian entropy bound against dense SVDs, closed forms and envelope gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import bounds
from tests.bounds import generators

METHODS = ["lanczos", "lobpcg", "dense"]


def dense_singular_values(fn, z):
  jac = jax.jacfwd(lambda z: jnp.ravel(fn(z)))(z)
  return np.linalg.svd(np.asarray(jac), compute_uv=False)[::-1]  # ascending


@pytest.fixture
def mlp_case(x64):
  params = generators.init_mlp(jax.random.PRNGKey(0), [6, 16, 10])
  z = jax.random.normal(jax.random.PRNGKey(1), (6,))
  return params, z


@pytest.fixture
def conv_case(x64):
  params = generators.init_conv(jax.random.PRNGKey(2), latent_dim=8)
  z = jax.random.normal(jax.random.PRNGKey(3), (8,))
  return params, z


@pytest.mark.parametrize("case", ["mlp_case", "conv_case"])
def test_eigs_reproduce_dense_svd(case, request):
  params, z = request.getfixturevalue(case)
  fn = generators.mlp(params) if case == "mlp_case" else generators.conv_generator(params)
  s = dense_singular_values(fn, z)
  res = bounds.jtj_eigs(fn, z, key=jax.random.PRNGKey(4), num_iters=z.shape[0], k=3)
  np.testing.assert_allclose(res.eigvals, s[:3] ** 2, rtol=1e-8)
  jac = jax.jacfwd(lambda z: jnp.ravel(fn(z)))(z)
  np.testing.assert_allclose(jac.T @ jac @ res.eigvecs, res.eigvecs * res.eigvals, atol=1e-8)
  # Block Rayleigh–Ritz converges too, given enough iterations.
  res = bounds.jtj_eigs(fn, z, key=jax.random.PRNGKey(4), num_iters=30, k=1, method="lobpcg")
  np.testing.assert_allclose(res.eigvals, s[:1] ** 2, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bound_never_exceeds_exact_logdet_once_converged(mlp_case, method):
  params, z = mlp_case
  fn = generators.mlp(params)
  exact = bounds.half_logdet_exact(fn, z)
  np.testing.assert_allclose(exact, np.sum(np.log(dense_singular_values(fn, z))), rtol=1e-10)
  for k in (1, 2, 6):
    bound = bounds.logdet_lower_bound(fn, z, key=jax.random.PRNGKey(5), num_iters=30, k=k,
                                      method=method)
    s = dense_singular_values(fn, z)
    expected = np.sum(np.log(s[:k])) + (6 - k) * np.log(s[k - 1])
    np.testing.assert_allclose(bound, expected, rtol=1e-6)
    assert bound <= exact + 1e-8
  # k = d uses every singular value: the bound is the exact value.
  np.testing.assert_allclose(bound, exact, rtol=1e-8)


def test_unconverged_ritz_value_overstates_smallest_singular_value(mlp_case):
  params, z = mlp_case
  fn = generators.mlp(params)
  s_min = dense_singular_values(fn, z)[0]
  for num_iters in (1, 2, 3, 6):
    res = bounds.jtj_eigs(fn, z, key=jax.random.PRNGKey(6), num_iters=num_iters)
    assert res.eigvals[0] >= s_min ** 2 * (1 - 1e-12)


@pytest.mark.usefixtures("x64")
def test_linear_generator_gives_exact_logdet():
  a = jax.random.normal(jax.random.PRNGKey(7), (9, 4))
  b = jnp.arange(9.0)
  fn = lambda z: a @ z + b
  z = jnp.ones(4)
  expected = 0.5 * np.linalg.slogdet(np.asarray(a.T @ a))[1]
  np.testing.assert_allclose(bounds.half_logdet_exact(fn, z), expected, rtol=1e-12)
  bound = bounds.logdet_lower_bound(fn, z, key=jax.random.PRNGKey(8), num_iters=4, k=4)
  np.testing.assert_allclose(bound, expected, rtol=1e-10)
  # A square map uses log|det J| directly.
  square = jax.random.normal(jax.random.PRNGKey(9), (4, 4))
  np.testing.assert_allclose(bounds.half_logdet_exact(lambda z: square @ z, z),
                             np.log(abs(np.linalg.det(np.asarray(square)))), rtol=1e-12)


def test_with_output_returns_the_same_value_and_the_generator_output(conv_case):
  params, z = conv_case
  fn = generators.conv_generator(params)
  value, out = bounds.half_logdet_exact(fn, z, with_output=True)
  np.testing.assert_allclose(value, bounds.half_logdet_exact(fn, z), rtol=1e-12)
  np.testing.assert_allclose(out, fn(z), rtol=1e-12)
  kwargs = dict(key=jax.random.PRNGKey(4), num_iters=8, k=2, method="lanczos")
  bound, out = bounds.logdet_lower_bound(fn, z, with_output=True, **kwargs)
  np.testing.assert_allclose(bound, bounds.logdet_lower_bound(fn, z, **kwargs), rtol=1e-12)
  np.testing.assert_allclose(out, fn(z), rtol=1e-12)
  assert out.shape == fn(z).shape


@pytest.mark.parametrize("method", METHODS)
def test_gradient_is_the_envelope_gradient(mlp_case, method):
  params, z = mlp_case

  def bound(params, z):
    return bounds.logdet_lower_bound(generators.mlp(params), z, key=jax.random.PRNGKey(10),
                                     num_iters=60, method=method)

  def envelope(params, z):
    # d · u_minᵀ (∂J) v_min / s_min, written through a dense SVD with the vectors held fixed.
    jac_fn = lambda p: jax.jacfwd(generators.mlp(p))(z)
    u, s, vt = jnp.linalg.svd(jac_fn(params), full_matrices=False)
    u_min, v_min = jax.lax.stop_gradient(u[:, -1]), jax.lax.stop_gradient(vt[-1])
    s_min = jax.lax.stop_gradient(s[-1])
    return 6 * (u_min @ jac_fn(params) @ v_min) / s_min

  got = jax.grad(bound)(params, z)
  expected = jax.grad(envelope)(params, z)
  for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-9)
  # And with respect to the latent (used for the generator's latent score).
  dense_latent = jax.grad(lambda z: 6 * jnp.log(jnp.linalg.svd(
      jax.jacfwd(generators.mlp(params))(z), compute_uv=False)[-1]))(z)
  np.testing.assert_allclose(jax.grad(bound, argnums=1)(params, z), dense_latent, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_float32_jit_and_finite_for_singular_jacobian(method, variant):
  fn = lambda z: jnp.concatenate([z[:2], jnp.zeros(3)])  # rank 2 of 3: s_min = 0
  bound = variant(lambda z, key: bounds.logdet_lower_bound(fn, z, key=key, num_iters=3,
                                                           method=method))
  value = bound(jnp.ones(3), jax.random.PRNGKey(0))
  assert np.isfinite(value) and value < 3 * np.log(1e-3)
  grads = jax.grad(bound)(jnp.ones(3), jax.random.PRNGKey(0))
  assert np.all(np.isfinite(grads))


def test_input_errors():
  with pytest.raises(ValueError, match="lanczos"):
    bounds.jtj_eigs(jnp.sin, jnp.ones(3), key=jax.random.PRNGKey(0), num_iters=3, method="svd")
  with pytest.raises(ValueError, match="vmap"):
    bounds.jtj_eigs(jnp.sin, jnp.ones((2, 3)), key=jax.random.PRNGKey(0), num_iters=3)


def test_closed_form_2x2_eigenpairs_match_lapack(x64):
  """The dense solver's closed form for d = 2, including diagonal, repeated and zero grams."""
  from bdbounds.bounds.jacobian import symmetric_eigh_2x2
  rng = np.random.default_rng(0)
  grams = [np.eye(2), np.diag([2.0, 1.0]), np.diag([1.0, 3.0]), np.array([[1, 1e-9], [1e-9, 1]]), np.zeros((2, 2))]
  for _ in range(100):
    a = rng.normal(size=(2, 2)) * 10 ** rng.uniform(-3, 3, size=(2, 1))
    grams.append(a.T @ a)
  for gram in grams:
    vals, vecs = symmetric_eigh_2x2(jnp.asarray(gram))
    scale = max(np.abs(gram).max(), 1e-300)
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(gram), atol=1e-14 * scale)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(gram @ vecs, vecs * vals, atol=1e-9 * scale)


@pytest.mark.parametrize("sizes", [[2, 16, 2], [3, 16, 5], [4, 8, 4]])
def test_forward_mode_logdet_gradient_matches_reverse_mode(sizes, x64):
  params = generators.init_mlp(jax.random.PRNGKey(0), sizes)
  fn = generators.mlp(params)
  z = jax.random.normal(jax.random.PRNGKey(1), (sizes[0],))
  value, gradient, out = bounds.half_logdet_with_gradient(fn, z)
  np.testing.assert_allclose(value, bounds.half_logdet_exact(fn, z), rtol=1e-10)
  np.testing.assert_allclose(gradient, jax.grad(lambda z: bounds.half_logdet_exact(fn, z))(z), rtol=1e-9)
  np.testing.assert_allclose(out, fn(z), rtol=1e-12)


def test_forward_mode_logdet_is_accurate_in_float32_near_a_fold():
  """det JᵀJ = ε² rounds to nothing (or below zero) in float32; log|det J| does not."""
  a = jnp.array([[1.0, 1.0], [1.0, 1.0001]], jnp.float32)
  value, gradient, _ = bounds.half_logdet_with_gradient(lambda z: a @ z, jnp.zeros(2, jnp.float32))
  np.testing.assert_allclose(value, np.log(1e-4), rtol=1e-3)
  np.testing.assert_allclose(gradient, [0.0, 0.0], atol=1e-6)
