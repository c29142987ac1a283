"""Entropy lower bound from the singular values of the generator Jacobian.

For an injective generator `x = G(z)`, `z ~ N(0, I_d)`, the entropy of its law on the image
manifold is `H(q) = H(N(0, I_d)) + E_z[½ log det JᵀJ]`. Every function here works on ONE
latent `z` of shape `[d]`; `fn` may return any shape (it is flattened to `D`).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from bdbounds.bounds import linalg

def _flat(fn: Callable) -> Callable:
  return lambda z: jnp.ravel(fn(z))


def symmetric_eigh_2x2(gram):
  """Ascending eigenpairs of a symmetric 2×2 matrix in closed form, as `jnp.linalg.eigh` returns
  them: `(eigvals [2], eigvecs [2, 2] as columns)`. A batched LAPACK call costs more than the
  whole toy generator pass on a CPU."""
  a, b, c = gram[0, 0], gram[0, 1], gram[1, 1]
  mean, radius = 0.5 * (a + c), jnp.hypot(0.5 * (a - c), b)
  low = mean - radius
  # Two candidate eigenvectors of `low`; the longer one is the better conditioned.
  v1, v2 = jnp.stack([b, low - a]), jnp.stack([low - c, b])
  v = jnp.where(jnp.sum(v1**2) >= jnp.sum(v2**2), v1, v2)
  norm = jnp.sqrt(jnp.sum(v**2))
  v = jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0), jnp.array([1.0, 0.0], gram.dtype))
  vecs = jnp.stack([v, jnp.stack([-v[1], v[0]])], axis=1)
  return jnp.stack([low, mean + radius]), vecs


def _dense_smallest(fn: Callable, z: jax.Array, *, k: int, **_) -> linalg.EigResult:
  """Exact eigenpairs from the dense `JᵀJ` (one jacfwd): the right choice for tiny d."""
  jac = jax.jacfwd(_flat(fn))(z)
  gram = jac.T @ jac
  vals, vecs = symmetric_eigh_2x2(gram) if gram.shape == (2, 2) else jnp.linalg.eigh(gram)
  vals, vecs = vals[:k], vecs[:, :k]
  return linalg.EigResult(vals, vecs, linalg.ritz_residuals(lambda v: gram @ v, vals, vecs))


_SOLVERS = {"lanczos": linalg.lanczos_smallest, "lobpcg": linalg.lobpcg_smallest}


def jtj_matvec(fn: Callable, z: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """`v ↦ JᵀJ v` at `z`: linearise once, then one jvp and one transposed jvp per product."""
  _, jvp = jax.linearize(_flat(fn), z)
  vjp = jax.linear_transpose(jvp, z)
  return lambda v: vjp(jvp(v))[0]


def jtj_eigs(fn: Callable, z: jax.Array, *, key, num_iters: int, k: int = 1,
             method: str = "lanczos") -> linalg.EigResult:
  """Smallest k eigenpairs of `JᵀJ` (J = ∂fn/∂z at z), matrix-free.

  Returns `(eigvals [k] ascending, eigvecs [d, k], residuals [k])`. The eigenvalues are
  squared singular values of J. Ritz values satisfy `eigvals[i] ≥ λ_i(JᵀJ)`, with equality
  once converged (Lanczos with `num_iters ≥ d` reproduces a dense SVD). `method` is
  "lanczos" (full reorthogonalisation, the default), "lobpcg" (block Rayleigh–Ritz) or
  "dense" (exact `eigh` of the dense `JᵀJ`, ignores `num_iters`; for small d).
  Nothing is differentiated through the iteration: the outputs carry no gradient.
  """
  if method not in (*_SOLVERS, "dense"):
    raise ValueError(f"unknown eigensolver method {method!r}; choose one of {sorted(_SOLVERS)} or 'dense'")
  if z.ndim != 1:
    raise ValueError(f"z must be one latent vector of shape [d]; got shape {z.shape} (vmap over a batch)")
  z = jax.lax.stop_gradient(z)
  # Hoist the tracers `fn` closes over (e.g. parameters under `jax.grad`) and cut their
  # gradient, so autodiff never traces through the solver's iterations at all.
  converted, consts = jax.closure_convert(_flat(fn), z)
  consts = [jax.lax.stop_gradient(c) for c in consts]
  fn = lambda z: converted(z, *consts)
  if method == "dense":
    result = _dense_smallest(fn, z, k=k)
  else:
    result = _SOLVERS[method](jtj_matvec(fn, z), z.shape[0], key=key, num_iters=num_iters, k=k,
                              dtype=z.dtype)
  return jax.tree_util.tree_map(jax.lax.stop_gradient, result)


def _log_norm(v: jax.Array) -> jax.Array:
  """log ‖v‖, floored at the smallest normal number so a singular J gives a finite bound."""
  return 0.5 * jnp.log(jnp.maximum(jnp.sum(jnp.square(v)), jnp.finfo(v.dtype).tiny))


def logdet_lower_bound(fn: Callable, z: jax.Array, *, key, num_iters: int, k: int = 1,
                       method: str = "lanczos", with_output: bool = False):
  """Lower bound on `½ log det(JᵀJ)` from the k smallest singular values of J at z.

      ½ log det JᵀJ = Σ_i log s_i ≥ Σ_{i<k} log s_(i) + (d − k + 1) log s_(k)

  (k = 1: `d · log s_min`.) Tight when the d − k largest singular values equal s_(k). The
  Ritz vectors `v_i` are held fixed and `s_(i)` is recomputed as `‖J v_i‖`, so the value is
  the Ritz estimate and the gradient with respect to `z` or to parameters closed over by `fn`
  is the envelope-theorem gradient `u_iᵀ (∂J) v_i / s_i`. An unconverged solve over-states
  the bound; check `jtj_eigs(...).residuals`. With `with_output`, returns `(bound, fn(z))`,
  the output taken from the same forward pass (callers that also need `G(z)` save one).
  """
  _, vecs, _ = jtj_eigs(fn, z, key=key, num_iters=num_iters, k=k, method=method)
  out, jv = jax.vmap(lambda v: jax.jvp(fn, (z,), (v,)), in_axes=1, out_axes=(None, 0))(vecs)
  log_s = jax.vmap(_log_norm)(jv.reshape(k, -1))
  multiplicity = jnp.ones((k,), log_s.dtype).at[-1].set(z.shape[0] - k + 1)
  bound = jnp.sum(multiplicity * log_s)
  return (bound, out) if with_output else bound


def half_logdet_exact(fn: Callable, z: jax.Array, *, with_output: bool = False):
  """Dense oracle `½ log det(JᵀJ)` via `jax.jacfwd`; `log |det J|` when J is square.

  With `with_output`, returns `(value, fn(z))` from the same forward pass.
  """
  jac, out = jax.jacfwd(lambda z: (_flat(fn)(z), fn(z)), has_aux=True)(z)
  if jac.shape[0] == jac.shape[1]:
    value = jnp.linalg.slogdet(jac)[1]
  else:
    value = 0.5 * jnp.linalg.slogdet(jac.T @ jac)[1]
  return (value, out) if with_output else value


def _half_logdet_and_pseudo_inverse(jac):
  """`(½ log det JᵀJ, (JᵀJ)⁻¹Jᵀ)` for a full-rank D×d Jacobian. A square J uses `log|det J|` and
  `J⁻¹` (closed form for 2×2): forming JᵀJ first squares the condition number, and its 2×2
  determinant can round to a negative number near a fold."""
  if jac.shape == (2, 2):
    det = jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]
    adjugate = jnp.array([[jac[1, 1], -jac[0, 1]], [-jac[1, 0], jac[0, 0]]])
    return jnp.log(jnp.abs(det)), adjugate / det
  if jac.shape[0] == jac.shape[1]:
    return jnp.linalg.slogdet(jac)[1], jnp.linalg.inv(jac)
  gram = jac.T @ jac
  return 0.5 * jnp.linalg.slogdet(gram)[1], jnp.linalg.solve(gram, jac.T)


def half_logdet_with_gradient(fn: Callable, z: jax.Array, *, with_jacobian: bool = False):
  """`(½ log det JᵀJ, its gradient in z, fn(z))` at one z, from one forward-over-forward pass;
  with `with_jacobian`, also the `[D, d]` Jacobian of the flattened `fn` that pass formed.

  `∂_k ½ log det JᵀJ = tr((JᵀJ)⁻¹ Jᵀ ∂_k J)`, with `∂_k J` the second derivatives of `fn`:
  the same numbers as reverse mode through `half_logdet_exact`, for less work.
  """
  flat = _flat(fn)

  def jac_with_aux(z):
    jac, out = jax.jacfwd(lambda z: (flat(z), fn(z)), has_aux=True)(z)
    return jac, (jac, out)

  second, (jac, out) = jax.jacfwd(jac_with_aux, has_aux=True)(z)  # second[:, i, k] = ∂_k J[:, i]
  half_logdet, pseudo_inverse = _half_logdet_and_pseudo_inverse(jac)
  gradient = jnp.einsum("ij,jik->k", pseudo_inverse, second)
  return (half_logdet, gradient, out, jac) if with_jacobian else (half_logdet, gradient, out)
