"""Upper bounds on KL(q ‖ p_θ) from a log-Sobolev inequality, and the penalties they ground.

If `p_θ ∝ exp(−E)` satisfies a log-Sobolev inequality with constant C,
`KL(q ‖ p_θ) ≤ (C/2) E_q ‖∇ log q + ∇E‖²`. Every function takes ONE example `x` (any
shape) and an `energy_fn(x) -> scalar`; callers vmap and average.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from bdbounds.bounds.importance import generator_log_density_and_score


def _flat_energy(energy_fn: Callable, x: jax.Array):
  """The energy as a function of the flattened example, and that flat example."""
  return (lambda flat: energy_fn(flat.reshape(x.shape))), jnp.ravel(x)


def lsi_kl_upper_bound(energy_fn: Callable, x: jax.Array, score_q: jax.Array, *,
                       lsi_constant) -> jax.Array:
  """`(C/2) ‖∇E(x) + ∇log q(x)‖²`; its mean over `x ~ q` bounds KL(q ‖ p_θ) under LSI(C).

  Tight when q = p_θ (both sides vanish). For a Gaussian `p_θ = N(m, Σ)`, `C = λ_max(Σ)`.
  """
  grad = jax.grad(energy_fn)(x)
  return 0.5 * lsi_constant * jnp.sum(jnp.square(grad + score_q))


def r1_penalty(energy_fn: Callable, x: jax.Array) -> jax.Array:
  """`‖∇E(x)‖²`: the zero-centred gradient penalty (R1 on data).

  Not a bound by itself: the θ-dependent `‖∇E‖²` part of the score-matching form with q ≈ p_data.
  """
  return jnp.sum(jnp.square(jax.grad(energy_fn)(x)))


def laplacian(energy_fn: Callable, x: jax.Array, *, key=None, num_probes: int = 1,
              exact: bool = False) -> jax.Array:
  """`ΔE(x) = tr ∇²E(x)`: dense Hessian trace, or Hutchinson with Rademacher probes.

  Hutchinson is unbiased, `E[εᵀHε] = tr H`, with variance `2 Σ_{i≠j} H_ij² / num_probes`;
  each probe costs one jvp of the gradient.
  """
  flat_energy, flat_x = _flat_energy(energy_fn, x)
  if exact:
    return jnp.trace(jax.hessian(flat_energy)(flat_x))
  if key is None:
    raise ValueError("Hutchinson's estimator needs a PRNG key (or pass exact=True)")
  probes = jax.random.rademacher(key, (num_probes, flat_x.size), dtype=flat_x.dtype)
  grad_fn = jax.grad(flat_energy)
  hvp = jax.vmap(lambda eps: jax.jvp(grad_fn, (flat_x,), (eps,))[1])(probes)
  return jnp.mean(jnp.sum(probes * hvp, axis=1))


def score_matching_term(energy_fn: Callable, x: jax.Array, *, key=None, num_probes: int = 1,
                        exact: bool = False) -> jax.Array:
  """`‖∇E(x)‖² − 2 ΔE(x)`, the θ-dependent part of the relative Fisher information.

  Integrating by parts (q ∇E → 0 at infinity):
  `E_q ‖∇log q + ∇E‖² = E_q[‖∇E‖² − 2ΔE] + J(q)`, `J(q) = E_q ‖∇log q‖²` independent of θ.
  So `(C/2)(E_q[this] + J(q))` bounds KL(q ‖ p_θ) under LSI(C). ΔE by Hutchinson unless `exact`.
  """
  lap = laplacian(energy_fn, x, key=key, num_probes=num_probes, exact=exact)
  return r1_penalty(energy_fn, x) - 2.0 * lap


def latent_fisher_penalty(energy_fn: Callable, generator_fn: Callable, z: jax.Array,
                          latent_score: jax.Array, *, key, num_probes: int = 1) -> jax.Array:
  """The original code's directional penalty along the generator manifold.

      ½ E_v [(vᵀ Jᵀ ∇_x E(G(z)) − vᵀ s(z))²],   v ~ N(0, I_d),

  with `s(z) = ∇_z[−log q(G(z))] = z + ∇_z ½ log det JᵀJ` (`latent_score`, e.g. from
  `jax.grad` of `½‖z‖² + logdet_lower_bound`). Since `E[v vᵀ] = I` this is a Hutchinson
  estimate of the latent Fisher divergence `½ ‖∇_z(E∘G + log q∘G)‖²`; zero when p_θ and q
  agree along the manifold. `J v` and `s(z)` are held fixed: only the energy is trained.
  """
  z = jax.lax.stop_gradient(z)
  latent_score = jax.lax.stop_gradient(latent_score)
  probes = jax.random.normal(key, (num_probes,) + z.shape, z.dtype)
  x, tangents = jax.vmap(lambda v: jax.jvp(generator_fn, (z,), (v,)), out_axes=(None, 0))(probes)
  x, tangents = jax.lax.stop_gradient(x), jax.lax.stop_gradient(tangents)
  # vᵀJᵀ∇E(x) is the derivative of E at x along Jv: one jvp of the energy per probe.
  directional = jax.vmap(lambda t: jax.jvp(energy_fn, (x,), (t,))[1])(tangents)
  return 0.5 * jnp.mean(jnp.square(directional - probes @ latent_score))


def generator_fisher_terms(energy_fn: Callable, generator_fn: Callable, z: jax.Array):
  """`(‖∇_x log q + ∇E‖², ‖∇_z(log q∘G + E∘G)‖², log q(G(z)), sign det J)` at ONE latent of a
  square generator (d = D, so q has a density): the integrands of the ambient and the latent
  relative Fisher information, whose means over z bound `KL(q ‖ p_θ)` under LSI(C) as
  `(C/2)·FI` and `(C_z/2)·FI_z`.

  `∇_z log q(G(z)) = Jᵀ ∇_x log q(G(z))` (chain rule), so the ambient score solves `Jᵀ s_x = s_z`,
  and the latent integrand is `‖Jᵀ(s_x + ∇E)‖²`. Where G folds (a sign change of det J across
  latents) the change-of-variables density counts one preimage and is not q's.
  """
  log_q, score_z, x, jac = generator_log_density_and_score(generator_fn, z, with_jacobian=True)
  grad_e = jax.grad(energy_fn)(x)
  score_x = jnp.linalg.solve(jac.T, score_z)
  return (jnp.sum(jnp.square(score_x + grad_e)), jnp.sum(jnp.square(score_z + jac.T @ grad_e)), log_q,
          jnp.sign(jnp.linalg.det(jac)))
