"""Both sides of the entropy of a Gaussian channel's output, with no critic.

For `x = G(z) + σ ε` the conditional density `p(x | z) = N(x; G(z), σ² I)` is known, and the
marginal `q(x) = E_z p(x | z)` is a mean over latents. With B pairs `(x_i, z_i)` of one batch:

    H(q) ≥ E[−log (1/B) Σ_j p(x_i | z_j)]            (InfoNCE with the exact critic, ≤ H(x|z) + log B)
    H(q) ≤ E[−log (1/(B−1)) Σ_{j≠i} p(x_i | z_j)]    (leave one out: the z_j are independent of x_i)

The upper side: given `x_i`, the other latents are fresh draws, so the inner mean is an unbiased
estimate of `q(x_i)` and Jensen puts the log of it below `log q(x_i)` in expectation (Poole et
al., 2019). Both are per example, so their means carry standard errors; the upper one is loose
when σ is small against the distances between the G(z_j) (docs/bounds.md §6.1).
"""

import math

import jax
import jax.numpy as jnp


def gaussian_channel_entropy_bounds(x: jax.Array, means: jax.Array, sigma):
  """`(lower [B], upper [B])`: per-example terms whose means bound H(q) from below and above.

  `x [B, ...]` are the channel's outputs for latents whose clean outputs are `means [B, ...]`
  (row i of x made from row i of means), `sigma` the noise scale.
  """
  num = x.shape[0]
  x, means = x.reshape(num, -1), means.reshape(num, -1)
  dim = x.shape[1]
  sq_dist = (jnp.sum(jnp.square(x), 1)[:, None] - 2.0 * x @ means.T
             + jnp.sum(jnp.square(means), 1)[None, :])                                # [B, B]
  log_p = -0.5 * jnp.maximum(sq_dist, 0.0) / sigma**2 - dim * (jnp.log(sigma) + 0.5 * math.log(2 * math.pi))
  lower = -(jax.nn.logsumexp(log_p, axis=1) - math.log(num))
  others = jnp.where(jnp.eye(num, dtype=bool), -jnp.inf, log_p)
  upper = -(jax.nn.logsumexp(others, axis=1) - math.log(num - 1))
  return lower, upper
