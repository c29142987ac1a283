"""Variational lower bounds on the mutual information I(x; z), in nats.

For a noisy generator `x = G(z) + σ ε`, `H(x) = I(x; z) + H(x | z)` with
`H(x | z) = (D/2) log(2πe σ²)`, so any lower bound on I is an entropy lower bound.
Critic values come from joint pairs `(x_i, z_i)` and marginal pairs `(x_i, z_π(i))`,
`π` a within-batch permutation; Barber–Agakov instead takes an encoder's `log r(z_i | x_i)`.
All functions return bound values, not losses.
"""

import math

import jax
import jax.numpy as jnp


def nwj_bound(t_joint: jax.Array, t_marginal: jax.Array) -> jax.Array:
  """NWJ (f-GAN KL dual): `I ≥ E_joint[T] − E_marg[exp(T − 1)]`.

  Unbiased from samples; tight at `T* = 1 + log p(x, z) / (p(x) p(z))`.
  """
  return jnp.mean(t_joint) - jnp.mean(jnp.exp(t_marginal - 1.0))


def _log_mean_exp(t: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(t) - math.log(t.shape[0])


def dv_bound(t_joint: jax.Array, t_marginal: jax.Array) -> jax.Array:
  """Donsker–Varadhan: `I ≥ E_joint[T] − log E_marg[exp T]`, tight at `T* = log p(x|z)/p(x) + c`.

  The minibatch plug-in (computed with a stable log-mean-exp) over-estimates the DV bound
  in expectation (Jensen: `E log mean e^T ≤ log E e^T`), by O(1/B); MINE's corrected
  gradient is `mine_dv_surrogate`.
  """
  return jnp.mean(t_joint) - _log_mean_exp(t_marginal)


def infonce_bound(scores: jax.Array) -> jax.Array:
  """InfoNCE: `I ≥ E_i[T(x_i, z_i) − log (1/K) Σ_j exp T(x_i, z_j)]`, never above `log K`.

  `scores[i, j] = T(x_i, z_j)`, shape `[K, K]`, positives on the diagonal.
  """
  num = scores.shape[0]
  if scores.shape != (num, num):
    raise ValueError(f"scores must be square [K, K]; got {scores.shape}")
  return jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=1)) + math.log(num)


def barber_agakov_terms(log_r_joint: jax.Array, latent_dim: int) -> jax.Array:
  """Per-example Barber–Agakov terms `H(z) + log r(z_i | x_i)` for `z ~ N(0, I_latent_dim)`.

  For any conditional density `r`, `I = H(z) − H(z | x) ≥ H(z) + E_joint[log r(z | x)]` (Gibbs:
  `E log p(z|x) ≥ E log r(z|x)`), tight at `r = p(z | x)`. The terms are i.i.d. over the batch, so
  their mean is an unbiased estimate of the bound and their spread gives its standard error.
  """
  return 0.5 * latent_dim * math.log(2.0 * math.pi * math.e) + log_r_joint


def barber_agakov_bound(log_r_joint: jax.Array, latent_dim: int) -> jax.Array:
  """Barber–Agakov: `I ≥ H(z) + E_joint[log r(z | x)]`, the batch mean of `barber_agakov_terms`."""
  return jnp.mean(barber_agakov_terms(log_r_joint, latent_dim))


def jsd_mi_estimate(t_joint: jax.Array, t_marginal: jax.Array) -> jax.Array:
  """Jensen–Shannon MI estimator (Deep InfoMax / MEG): `E_joint[−softplus(−T)] − E_marg[softplus(T)]`.

  NOT a bound on I: a well-behaved training signal for the critic, whose optimum is also
  `log p(x, z)/(p(x) p(z))`. Report it as an estimate only.
  """
  return jnp.mean(-jax.nn.softplus(-t_joint)) - jnp.mean(jax.nn.softplus(t_marginal))


def update_log_ema(log_ema: jax.Array, t_marginal: jax.Array, *, decay: float) -> jax.Array:
  """Moving average of `E_marg[exp T]`, kept in log space so large critic values stay finite.

  Start from `log_ema = log mean exp(t_marginal)` of the first batch (or any finite value).
  """
  batch = jax.lax.stop_gradient(_log_mean_exp(t_marginal))
  return jnp.logaddexp(math.log(decay) + log_ema, math.log1p(-decay) + batch)


def mine_dv_surrogate(t_joint: jax.Array, t_marginal: jax.Array, log_ema: jax.Array) -> jax.Array:
  """DV bound with MINE's bias-corrected gradient (Belghazi et al. 2018).

  The value equals `dv_bound(t_joint, t_marginal)`; the gradient replaces
  `∇ log mean e^T` by `∇ mean e^T / EMA[mean e^T]`, which is less biased for small batches.
  `log_ema` comes from `update_log_ema` and is treated as a constant.
  """
  log_ema = jax.lax.stop_gradient(log_ema)
  corrected = jnp.mean(t_joint) - jnp.mean(jnp.exp(t_marginal - log_ema))
  value = dv_bound(t_joint, t_marginal)
  return corrected + jax.lax.stop_gradient(value - corrected)


def gaussian_conditional_entropy(dim: int, sigma) -> jax.Array:
  """`H(x | z) = (dim/2) log(2πe σ²)` for `x = G(z) + σ ε`, `ε ~ N(0, I_dim)`."""
  return 0.5 * dim * (jnp.log(2.0 * jnp.pi * jnp.e) + 2.0 * jnp.log(sigma))
