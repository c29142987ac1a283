"""Matrix-free symmetric eigensolvers for the smallest eigenpairs of an SPD operator.

Both solvers see the operator only through `matvec(v)`, so `A = JᵀJ` never has to be
formed. Both return Ritz pairs, whose values are upper bounds on the true smallest
eigenvalues (Courant–Fischer): an unconverged solve over-states `λ_min`, which is why
the relative residual is returned alongside.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Matvec = Callable[[jax.Array], jax.Array]


class EigResult(NamedTuple):
  eigvals: jax.Array    # [k], ascending Ritz values
  eigvecs: jax.Array    # [d, k], orthonormal Ritz vectors
  residuals: jax.Array  # [k], ‖A v − θ v‖ / θ


def ritz_residuals(matvec: Matvec, eigvals, eigvecs):
  """Relative residuals by explicit matvecs (honest, k extra operator applications)."""
  applied = jax.vmap(matvec, in_axes=1, out_axes=1)(eigvecs)
  resid = jnp.linalg.norm(applied - eigvecs * eigvals, axis=0)
  return resid / jnp.maximum(jnp.abs(eigvals), jnp.finfo(eigvals.dtype).tiny)


def lanczos_smallest(matvec: Matvec, dim: int, *, key, num_iters: int, k: int = 1,
                     dtype=None) -> EigResult:
  """k smallest eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

  `num_iters` is the Krylov dimension m (the number of matvecs, capped at `dim`). With
  m = dim the tridiagonal T is orthogonally similar to A, so the Ritz values equal the
  eigenvalues up to rounding. If the Krylov space becomes invariant (β ≈ 0) the next basis
  vector is a fresh random direction orthogonalised against the basis, with β = 0 in T, so T
  stays the projection of A onto an orthonormal basis.
  """
  m = min(num_iters, dim)
  if not 1 <= k <= m:
    raise ValueError(f"need 1 <= k <= min(num_iters, dim); got k={k}, num_iters={num_iters}, dim={dim}")
  start_key, restart_key = jax.random.split(key)
  dtype = dtype or jnp.result_type(float)
  q0 = jax.random.normal(start_key, (dim,), dtype)
  restarts = jax.random.normal(restart_key, (m, dim), dtype)

  def orthogonalise(basis, v):
    # Two passes of classical Gram–Schmidt against the whole (zero-padded) basis.
    for _ in range(2):
      v = v - basis.T @ (basis @ v)
    return v

  def body(j, carry):
    basis, alphas, betas, q = carry
    basis = basis.at[j].set(q)
    w = matvec(q)
    alpha = jnp.vdot(q, w)
    w = orthogonalise(basis, w)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(jnp.linalg.norm(alphas, ord=jnp.inf) + jnp.abs(alpha), 1.0)
    broke_down = beta <= 1e3 * jnp.finfo(dtype).eps * scale
    fresh = orthogonalise(basis, restarts[j])
    next_q = jnp.where(broke_down, fresh / jnp.linalg.norm(fresh), w / jnp.where(broke_down, 1.0, beta))
    beta = jnp.where(broke_down, 0.0, beta)
    return basis, alphas.at[j].set(alpha), betas.at[j].set(beta), next_q

  init = (jnp.zeros((m, dim), dtype), jnp.zeros((m,), dtype), jnp.zeros((m,), dtype),
          q0 / jnp.linalg.norm(q0))
  # Unrolled: XLA:CPU does not hoist the transposed jvp's loop-invariant work out of a rolled
  # loop, which made conv generators 10× slower; num_iters is static and small.
  basis, alphas, betas, _ = jax.lax.fori_loop(0, m, body, init, unroll=True)
  tridiag = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  theta, y = jnp.linalg.eigh(tridiag)
  eigvals, eigvecs = theta[:k], basis.T @ y[:, :k]
  eigvecs = eigvecs / jnp.linalg.norm(eigvecs, axis=0)
  return EigResult(eigvals, eigvecs, ritz_residuals(matvec, eigvals, eigvecs))


def _rayleigh_ritz(basis, applied, k):
  """Smallest k Ritz pairs of A on span(basis), robust to dependent columns.

  The Gram matrix is whitened by its eigendecomposition; directions with a negligible
  Gram eigenvalue (converged residuals, repeated vectors) are pushed to +∞ so they are
  never selected, which keeps every shape static under jit.
  """
  # Unit columns first, so a tiny residual or search direction is judged by its direction.
  norms = jnp.linalg.norm(basis, axis=0)
  norms = jnp.where(norms > jnp.finfo(basis.dtype).tiny, norms, 1.0)
  basis, applied = basis / norms, applied / norms
  gram = basis.T @ basis
  w, u = jnp.linalg.eigh(gram)
  keep = w > (1e-12 if basis.dtype == jnp.float64 else 1e-6) * jnp.max(w)
  whiten = u / jnp.sqrt(jnp.where(keep, w, 1.0))
  projected = whiten.T @ (basis.T @ applied) @ whiten
  projected = 0.5 * (projected + projected.T)
  both = keep[:, None] & keep[None, :]
  big = 1e3 * (jnp.max(jnp.abs(projected)) + 1.0)
  projected = jnp.where(both, projected, 0.0) + jnp.diag(jnp.where(keep, 0.0, big))
  theta, y = jnp.linalg.eigh(projected)
  coeffs = whiten @ y[:, :k]
  return theta[:k], coeffs / norms[:, None]


def lobpcg_smallest(matvec: Matvec, dim: int, *, key, num_iters: int, k: int = 1,
                    dtype=None) -> EigResult:
  """k smallest eigenpairs by block Rayleigh–Ritz (LOBPCG without preconditioner).

  Each iteration minimises the Rayleigh quotient over span[X, R, P] (current block,
  residuals, previous search directions) at the cost of one block of k matvecs; with k = 1
  this is the block-size-1 scheme of the original code. The first iteration uses [X, R].
  """
  if not 1 <= k <= dim:
    raise ValueError(f"need 1 <= k <= dim; got k={k}, dim={dim}")
  dtype = dtype or jnp.result_type(float)
  block_matvec = jax.vmap(matvec, in_axes=1, out_axes=1)
  x, _ = jnp.linalg.qr(jax.random.normal(key, (dim, k), dtype))
  ax = block_matvec(x)
  theta = jnp.sum(x * ax, axis=0)

  def step(x, ax, theta, p, ap):
    r = ax - x * theta
    ar = block_matvec(r)
    basis = jnp.concatenate([x, r] + ([p] if p is not None else []), axis=1)
    applied = jnp.concatenate([ax, ar] + ([ap] if ap is not None else []), axis=1)
    theta, coeffs = _rayleigh_ritz(basis, applied, k)
    new_x, new_ax = basis @ coeffs, applied @ coeffs
    # The new search direction is the part of the update outside the old block.
    new_p, new_ap = basis[:, k:] @ coeffs[k:], applied[:, k:] @ coeffs[k:]
    norms = jnp.linalg.norm(new_x, axis=0)
    return new_x / norms, new_ax / norms, theta, new_p, new_ap

  if num_iters >= 1:
    x, ax, theta, p, ap = step(x, ax, theta, None, None)
    x, ax, theta, p, ap = jax.lax.fori_loop(
        1, num_iters, lambda _, c: step(*c), (x, ax, theta, p, ap), unroll=True)
  order = jnp.argsort(theta)
  eigvals, eigvecs = theta[order], x[:, order]
  return EigResult(eigvals, eigvecs, ritz_residuals(matvec, eigvals, eigvecs))
