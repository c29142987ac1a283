"""Importance-weighted estimate of `log Z_θ` with the generator as proposal.

For a manifold generator with `d = D` that is injective, change of variables gives its exact
density `log q(G(z)) = log N(z; 0, I) − ½ log det JᵀJ`. With K samples `x_k = G(z_k)`,

    Ẑ_K = (1/K) Σ_k exp(−E(x_k) − log q(x_k)),   E[Ẑ_K] = Z,   E[log Ẑ_K] ≤ log Z,

and `E[log Ẑ_K]` grows with K from `E_q[−E] + H(q)` (K = 1: the Gibbs lower bound) towards
`log Z` (Burda et al., 2016). So `E_data[E] + log Ẑ_K` is a tighter NLL lower bound than the
single-sample one, and adding a KL upper bound keeps an upper bound (docs/bounds.md).
Its θ-gradient weighs each sample's `∇E` by its self-normalised importance weight.

Defensive samples (Hesterberg, 1995): K' more proposals from a density q₀ around the data, pooled
with the generator's, each weighed by its own proposal's density, keep `E[Ẑ] = Z` and guard
the one way the estimate fails: mass of `exp(−E)` where the generator puts almost none, which
`Ẑ_K` misses and the energy would be free to deepen.
"""

import math

import jax
import jax.numpy as jnp

from bdbounds.bounds.jacobian import half_logdet_exact, half_logdet_with_gradient


def _log_prior(z: jax.Array) -> jax.Array:
  """`log N(z; 0, I_d)`."""
  return -0.5 * jnp.sum(jnp.square(z)) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def generator_log_density(fn, z: jax.Array, *, with_output: bool = False):
  """`log q(fn(z))` for ONE latent `z ~ N(0, I_d)` by change of variables (exact density on
  the image when `fn` is injective; a fold makes it over-state `log q`). With `with_output`,
  returns `(log q, fn(z))` from the same forward pass."""
  half_logdet, out = half_logdet_exact(fn, z, with_output=True)
  log_q = _log_prior(z) - half_logdet
  return (log_q, out) if with_output else log_q


def generator_log_density_and_score(fn, z: jax.Array):
  """`(log q(fn(z)), ∇_z log q(fn(z)), fn(z))` for ONE latent, from one forward-over-forward
  pass (`half_logdet_with_gradient`): the density for importance weights and the latent
  score for the latent-Fisher penalty together."""
  half_logdet, gradient, out = half_logdet_with_gradient(fn, z)
  return _log_prior(z) - half_logdet, -z - gradient, out


def data_kernel_proposal(key: jax.Array, reference: jax.Array, n: int, scales=(0.01, 0.03, 0.1, 0.3, 1.0)):
  """`(x [n, D], log q₀(x) [n])`: `n` draws from the multi-scale kernel density around
  `reference` ([N, D]), `q₀ = (1/(N S)) Σ_{i,s} N(x; x_i, h_s² I)` with `h_s = scales[s] ×`
  the reference's standard deviation (averaged over dimensions), and their log-densities. A
  defensive proposal: it reaches every neighbourhood of the data, down to the finest scale,
  whatever the generator does."""
  reference = jax.lax.stop_gradient(reference)
  num_ref, dim = reference.shape
  widths = jnp.asarray(scales, reference.dtype) * jnp.mean(jnp.std(reference, axis=0)) + 1e-6
  i_key, s_key, e_key = jax.random.split(key, 3)
  centres = reference[jax.random.randint(i_key, (n,), 0, num_ref)]
  h = widths[jax.random.randint(s_key, (n,), 0, len(scales))]
  x = centres + h[:, None] * jax.random.normal(e_key, (n, dim), reference.dtype)
  sq_dist = jnp.sum(jnp.square(x[:, None, :] - reference[None, :, :]), axis=-1)           # [n, N]
  # Shifting by the nearest centre's distance makes every scale's largest term exp(0), so each
  # scale's sum over centres is one pass with no max to find first (the kernel sum dominates
  # the cost of the whole proposal) and never underflows to log 0.
  nearest = jnp.min(sq_dist, axis=1)
  half_precision = 0.5 / jnp.square(widths)                                               # [S]
  scaled = -(sq_dist - nearest[:, None])[:, :, None] * half_precision                    # [n, N, S]
  log_kernel_sums = (jnp.log(jnp.sum(jnp.exp(scaled), axis=1))                           # [n, S]
                     - nearest[:, None] * half_precision - dim * jnp.log(widths))
  log_q = (jax.nn.logsumexp(log_kernel_sums, axis=1) - 0.5 * dim * math.log(2 * math.pi)
           - math.log(num_ref * len(scales)))
  return x, log_q


def importance_log_partition(energies: jax.Array, log_q: jax.Array):
  """`(log Ẑ_K, effective sample size / K)` from K proposals' energies and log-densities.

  The value is differentiable in the energies; its gradient is `−Σ_k w_k ∇E(x_k)` with the
  self-normalised weights `w = softmax(−E − log q)`. The ESS fraction `1 / (K Σ w²)` (1 when
  q = p_θ) says how much the estimate can be trusted.
  """
  log_w = -energies - log_q
  k = energies.shape[0]
  log_z = jax.nn.logsumexp(log_w) - math.log(k)
  w = jax.nn.softmax(jax.lax.stop_gradient(log_w))
  return log_z, 1.0 / (k * jnp.sum(jnp.square(w)))
