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
`Ẑ_K` misses and the energy would be free to deepen. Pooling keeps `E[Ẑ] = Z`, hence
`E log Ẑ ≤ log Z`, but loses `E log Ẑ ≥ E_q[−E] + H(q)`: the pooled estimate can fall below the
Gibbs bound, so `E_data[E] + log Ẑ_pool + KL_ub` is NOT an upper bound on the NLL (docs/bounds.md §1.4).

An upper bound on `log Z` needs more than the mean of the weights: `log Z ≤ ½ log E_q[w²]`
(`chi2_log_partition_bound`).
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
  the image when `fn` is injective; where `fn` folds it counts one preimage of several, so it
  under-states `log q`). With `with_output`,
  returns `(log q, fn(z))` from the same forward pass."""
  half_logdet, out = half_logdet_exact(fn, z, with_output=True)
  log_q = _log_prior(z) - half_logdet
  return (log_q, out) if with_output else log_q


def generator_log_density_and_score(fn, z: jax.Array, *, with_jacobian: bool = False):
  """`(log q(fn(z)), ∇_z log q(fn(z)), fn(z))` for ONE latent, from one forward-over-forward
  pass (`half_logdet_with_gradient`): the density for importance weights and the latent
  score for the latent-Fisher penalty together; with `with_jacobian`, also the pass's Jacobian."""
  half_logdet, gradient, out, *jac = half_logdet_with_gradient(fn, z, with_jacobian=with_jacobian)
  return (_log_prior(z) - half_logdet, -z - gradient, out, *jac)


def data_kernel_proposal(key: jax.Array, reference: jax.Array, n: int, scales=(0.01, 0.03, 0.1, 0.3, 1.0)):
  """`(x [n, D], log q₀(x) [n])`: `n` draws from the multi-scale kernel density around
  `reference` ([N, D]), `q₀ = (1/(N S)) Σ_{i,s} N(x; x_i, h_s² I)` with `h_s = scales[s] ×`
  the reference's standard deviation (averaged over dimensions), and their log-densities. A
  defensive proposal: it reaches every neighbourhood of the data, down to the finest scale,
  whatever the generator does."""
  reference = jax.lax.stop_gradient(reference)
  num_ref, dim = reference.shape
  widths = _kernel_widths(reference, scales)
  i_key, s_key, e_key = jax.random.split(key, 3)
  centres = reference[jax.random.randint(i_key, (n,), 0, num_ref)]
  h = widths[jax.random.randint(s_key, (n,), 0, len(scales))]
  x = centres + h[:, None] * jax.random.normal(e_key, (n, dim), reference.dtype)
  return x, data_kernel_log_density(x, reference, scales)


def _kernel_widths(reference, scales):
  return jnp.asarray(scales, reference.dtype) * jnp.mean(jnp.std(reference, axis=0)) + 1e-6


def data_kernel_log_density(x: jax.Array, reference: jax.Array, scales=(0.01, 0.03, 0.1, 0.3, 1.0)):
  """`log q₀(x)` [n] of `data_kernel_proposal`'s kernel density around `reference`, at any `x` [n, D]."""
  reference = jax.lax.stop_gradient(reference)
  num_ref, dim = reference.shape
  widths = _kernel_widths(reference, scales)
  sq_dist = jnp.sum(jnp.square(x[:, None, :] - reference[None, :, :]), axis=-1)           # [n, N]
  # Shifting by the nearest centre's distance makes every scale's largest term exp(0), so each
  # scale's sum over centres is one pass with no max to find first (the kernel sum dominates
  # the cost of the whole proposal) and never underflows to log 0.
  nearest = jnp.min(sq_dist, axis=1)
  half_precision = 0.5 / jnp.square(widths)                                               # [S]
  scaled = -(sq_dist - nearest[:, None])[:, :, None] * half_precision                    # [n, N, S]
  log_kernel_sums = (jnp.log(jnp.sum(jnp.exp(scaled), axis=1))                           # [n, S]
                     - nearest[:, None] * half_precision - dim * jnp.log(widths))
  return (jax.nn.logsumexp(log_kernel_sums, axis=1) - 0.5 * dim * math.log(2 * math.pi)
          - math.log(num_ref * len(scales)))


def histogram_proposal(key: jax.Array, log_cell_mass: jax.Array, lo, hi, n: int):
  """`(x [n, 2], log q(x) [n])`: draws from the piecewise-constant density on the box `[lo, hi]`
  whose `R × R` cells (rows are y) hold mass ∝ `exp(log_cell_mass)`. Fed a model's `−E` at the cell
  centres, it is a proposal close to the model with a density known exactly everywhere (0 outside
  the box, so mix it with one that has full support)."""
  res = log_cell_mass.shape[0]
  lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
  cell_key, offset_key = jax.random.split(key)
  cells = jax.random.categorical(cell_key, jnp.ravel(log_cell_mass), shape=(n,))
  corner = jnp.stack([cells % res, cells // res], axis=1).astype(jnp.float32)
  x = lo + (corner + jax.random.uniform(offset_key, (n, 2))) * (hi - lo) / res
  return x, histogram_log_density(x, log_cell_mass, lo, hi)


def histogram_log_density(x: jax.Array, log_cell_mass: jax.Array, lo, hi) -> jax.Array:
  """`log q(x)` [n] of `histogram_proposal`'s density at any `x` [n, 2]; −inf outside the box."""
  res = log_cell_mass.shape[0]
  lo, hi = jnp.asarray(lo, x.dtype), jnp.asarray(hi, x.dtype)
  cell = jnp.floor((x - lo) / (hi - lo) * res).astype(jnp.int32)
  inside = jnp.all((cell >= 0) & (cell < res), axis=1)
  cell = jnp.clip(cell, 0, res - 1)
  log_mass = jax.nn.log_softmax(jnp.ravel(log_cell_mass))[cell[:, 1] * res + cell[:, 0]]
  return jnp.where(inside, log_mass - jnp.sum(jnp.log((hi - lo) / res)), -jnp.inf)


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


def chi2_log_partition_bound(energies: jax.Array, log_q: jax.Array):
  """`(½ log mean w², its standard error, ESS / K of w²)` from K proposals `x_k ~ q₀` with exact
  log-densities `log_q`, `w = e^{−E} / q₀`.

  `log Z = log E w ≤ ½ log E w²` (Jensen, `(E w)² ≤ E w²`; the χ² bound, `½ log(1 + χ²(p_θ ‖ q₀))`
  above log Z) whenever `q₀ > 0` wherever `e^{−E} > 0`. The Monte-Carlo mean of `w²` is unbiased
  but heavy-tailed: mass of `e^{−E}` that no proposal reached is missing from it, which the ESS
  of the squared weights (small: a few proposals carry the mean) warns of. The standard error is
  the delta method's, `½ sd(w²) / (√K mean w²)`.
  """
  k = energies.shape[0]
  log_w2 = 2.0 * (-energies - log_q)
  bound = 0.5 * (jax.nn.logsumexp(log_w2) - math.log(k))
  u = jax.nn.softmax(log_w2)  # w² normalised: K Σu² − 1 is the squared coefficient of variation of w²
  sum_u2 = jnp.sum(jnp.square(u))
  return bound, 0.5 * jnp.sqrt(jnp.maximum(sum_u2 - 1.0 / k, 0.0)), 1.0 / (k * sum_u2)
