"""Matrix-free eigensolvers against dense eigendecompositions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds.bounds import linalg

SOLVERS = {"lanczos": linalg.lanczos_smallest, "lobpcg": linalg.lobpcg_smallest}


def random_spd(key, dim, cond=100.0):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (dim, dim)))
  eigs = jnp.geomspace(1.0, cond, dim)
  return (q * eigs) @ q.T, eigs


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("k", [1, 3])
def test_lanczos_full_dimension_is_exact(k):
  a, eigs = random_spd(jax.random.PRNGKey(0), 12)
  res = linalg.lanczos_smallest(lambda v: a @ v, 12, key=jax.random.PRNGKey(1), num_iters=12, k=k)
  np.testing.assert_allclose(res.eigvals, eigs[:k], rtol=1e-10)
  np.testing.assert_allclose(res.eigvecs.T @ res.eigvecs, np.eye(k), atol=1e-10)
  assert np.all(res.residuals < 1e-8)
  # Eigenvectors: A v = λ v.
  np.testing.assert_allclose(a @ res.eigvecs, res.eigvecs * res.eigvals, atol=1e-8)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_ritz_values_bound_from_above_and_improve_monotonically(method):
  a, eigs = random_spd(jax.random.PRNGKey(2), 24, cond=20.0)
  errors = []
  for num_iters in (2, 6, 12, 24):
    res = SOLVERS[method](lambda v: a @ v, 24, key=jax.random.PRNGKey(3), num_iters=num_iters, k=2)
    # Courant–Fischer: Ritz values never undershoot the true eigenvalues.
    assert np.all(np.asarray(res.eigvals) >= np.asarray(eigs[:2]) * (1 - 1e-10))
    errors.append(float(res.eigvals[0] - eigs[0]))
  assert all(e2 <= e1 + 1e-12 for e1, e2 in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-3 * float(eigs[0])


@pytest.mark.usefixtures("x64")
def test_lanczos_survives_invariant_subspace():
  # Rank-deficient start: a diagonal matrix with repeated eigenvalues makes the Krylov space
  # invariant early; the restart must still find every eigenvalue.
  diag = jnp.array([1.0, 1.0, 1.0, 2.0, 2.0, 5.0])
  res = linalg.lanczos_smallest(lambda v: diag * v, 6, key=jax.random.PRNGKey(0), num_iters=6, k=4)
  np.testing.assert_allclose(res.eigvals, [1.0, 1.0, 1.0, 2.0], atol=1e-9)
  assert np.all(np.isfinite(res.eigvecs))


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_shapes_and_float32(method, variant):
  a, eigs = random_spd(jax.random.PRNGKey(4), 16, cond=10.0)

  @variant
  def solve(key):
    return SOLVERS[method](lambda v: a @ v, 16, key=key, num_iters=16, k=2)

  res = solve(jax.random.PRNGKey(5))
  chex.assert_shape([res.eigvals, res.eigvecs, res.residuals], [(2,), (16, 2), (2,)])
  chex.assert_tree_all_finite(res)
  np.testing.assert_allclose(res.eigvals, eigs[:2], rtol=2e-3)


def test_bad_k_is_rejected():
  with pytest.raises(ValueError, match="k"):
    linalg.lanczos_smallest(lambda v: v, 4, key=jax.random.PRNGKey(0), num_iters=2, k=3)
