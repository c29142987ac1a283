"""The only place where bounds become losses: signs, weights and reductions.

The game (docs/bounds.md): the generator and the critic MAXIMISE the NLL lower bound
`E_data[E] − E_q[E] + H_lb(q)`; the energy MINIMISES `E_data[E] − E_q[E] + λ·KL_ub`, or with
importance weighting `E_data[E] + log Ẑ_K + λ·KL_ub` (`−E_q[E] + H(q)` replaced by the
K-sample estimate of `log Z`, which is never smaller in expectation and closer to log Z). Every
loss below is something an optimiser minimises, and returns `(loss, terms)` where `terms`
holds the named, reduced pieces for metrics and fault reports.
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bdbounds import bounds

LOWER_BOUNDS = ("jacobian", "jacobian_exact", "mutual_info")
UPPER_BOUNDS = ("none", "latent_fisher", "score_matching", "r1", "diffusion")
MI_ESTIMATORS = ("infonce", "dv", "nwj")


@dataclasses.dataclass(frozen=True)
class BoundSettings:
  """Everything the losses need, as plain values (unpacked from the config at the boundary)."""
  lower: str = "jacobian"
  upper: str = "latent_fisher"
  entropy_weight: float = 1.0
  upper_weight: float = 1e-2
  weight_schedule: str = "adaptive"   # 0.7 (2307 + t)^-0.55, or "constant"
  hinge: float | None = None          # τ in relu(λ·penalty − τ); None disables the hinge
  jacobian_method: str = "dense"      # dense | lanczos | lobpcg
  jacobian_num_iters: int = 2
  jacobian_k: int = 1
  mi_estimator: str = "dv"
  num_probes: int = 1
  diffusion_num_t: int = 4
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  importance_weighting: bool = False  # energy's negative phase: log Ẑ_K with exact log q (manifold generator)
  defensive_samples: int = 0          # importance weighting: this many more proposals from a kernel density around the data

  def __post_init__(self):
    for name, value, choices in (("lower", self.lower, LOWER_BOUNDS), ("upper", self.upper, UPPER_BOUNDS),
                                 ("mi_estimator", self.mi_estimator, MI_ESTIMATORS),
                                 ("weight_schedule", self.weight_schedule, ("constant", "adaptive")),
                                 ("jacobian_method", self.jacobian_method, ("dense", "lanczos", "lobpcg"))):
      if value not in choices:
        raise ValueError(f"bounds.{name}={value!r} is not one of {choices}")
    if self.defensive_samples < 0:
      raise ValueError(f"bounds.defensive_samples={self.defensive_samples} must be 0 (off) or a number of samples")
    if self.importance_weighting and self.noisy_generator:
      raise ValueError("importance weighting needs the generator's density, which the noisy generator of "
                       "bounds.lower='mutual_info' does not have; use lower='jacobian' or 'jacobian_exact', or "
                       "bounds.negative_phase='samples'")

  @property
  def noisy_generator(self) -> bool:
    return self.lower == "mutual_info"

  @property
  def uses_critic(self) -> bool:
    return self.lower == "mutual_info"

  @property
  def time_conditioned_energy(self) -> bool:
    return self.upper == "diffusion"


class Networks(NamedTuple):
  """Per-example apply functions of the players, with parameters first."""
  energy: Callable        # (params, x) -> scalar; E(x) = E(x, 0) for a time-conditioned energy
  time_energy: Callable   # (params, x, t) -> scalar, or None
  generator: Callable     # (params, z) -> x
  sigma: Callable         # params -> scalar noise scale of the noisy generator
  critic: Callable        # (params, x, z) -> scalar, or None


# Fixed term names: a non-finite value is reported by (network, term) from these tables.
ENERGY_TERMS = ("energy_data", "energy_fake", "penalty", "ess", "loss")
GENERATOR_TERMS = ("energy_fake", "entropy", "loss")
CRITIC_TERMS = ("mi_bound", "loss")


def upper_weight(settings: BoundSettings, step) -> jax.Array:
  """λ_t: constant, or the original code's adaptive decay 0.7 (2307 + t)^−0.55."""
  if settings.weight_schedule == "adaptive":
    return 0.7 * (2307.0 + step) ** -0.55
  return jnp.asarray(settings.upper_weight, jnp.float32)


def _derangement(key, z):
  """Marginal pairs by a random non-zero roll: unlike a permutation, no pair stays joint."""
  shift = jax.random.randint(key, (), 1, z.shape[0])
  return jnp.roll(z, shift, axis=0)


def sample_fake(settings, nets, gen_params, z, key):
  """Generator samples `G(z)` (+ `σ ε` for the noisy generator)."""
  x = jax.vmap(lambda z: nets.generator(gen_params, z))(z)
  if settings.noisy_generator:
    x = x + nets.sigma(gen_params) * jax.random.normal(key, x.shape, x.dtype)
  return x


def half_logdet(settings, generator_fn, z, key, *, with_output=False):
  """Per-example `½ log det JᵀJ` (exact) or its singular-value lower bound, for one z
  (and `G(z)` from the same forward pass, `with_output`)."""
  if settings.lower == "jacobian_exact":
    return bounds.half_logdet_exact(generator_fn, z, with_output=with_output)
  return bounds.logdet_lower_bound(generator_fn, z, key=key, num_iters=settings.jacobian_num_iters,
                                   k=settings.jacobian_k, method=settings.jacobian_method,
                                   with_output=with_output)


def mi_lower_bound(settings, t_joint, t_marginal, scores=None):
  if settings.mi_estimator == "infonce":
    return bounds.infonce_bound(scores)
  if settings.mi_estimator == "dv":
    return bounds.dv_bound(t_joint, t_marginal)
  return bounds.nwj_bound(t_joint, t_marginal)


def _critic_values(settings, nets, critic_params, x, z, key):
  """Joint and marginal critic values, and the [B, B] score matrix for InfoNCE."""
  critic = lambda x, z: nets.critic(critic_params, x, z)
  if settings.mi_estimator == "infonce":
    scores = jax.vmap(lambda xi: jax.vmap(lambda zj: critic(xi, zj))(z))(x)
    return jnp.diagonal(scores), None, scores
  t_joint = jax.vmap(critic)(x, z)
  t_marginal = jax.vmap(critic)(x, _derangement(key, z))
  return t_joint, t_marginal, None


def entropy_lower_bound(settings, nets, gen_params, critic_params, z, key):
  """`H_lb(q)` from a batch of latents, differentiable in the generator's parameters."""
  logdet_key, eps_key, mi_key = jax.random.split(key, 3)
  if settings.lower in ("jacobian", "jacobian_exact"):
    d = z.shape[-1]
    keys = jax.random.split(logdet_key, z.shape[0])
    generator_fn = lambda z: nets.generator(gen_params, z)
    logdets, x = jax.vmap(lambda z, k: half_logdet(settings, generator_fn, z, k, with_output=True))(z, keys)
    return 0.5 * d * jnp.log(2 * jnp.pi * jnp.e) + jnp.mean(logdets), x
  x = sample_fake(settings, nets, gen_params, z, eps_key)
  t_joint, t_marginal, scores = _critic_values(settings, nets, critic_params, x, z, mi_key)
  info = mi_lower_bound(settings, t_joint, t_marginal, scores)
  dim = x[0].size
  return info + bounds.gaussian_conditional_entropy(dim, nets.sigma(gen_params)), x


def generator_loss(settings, nets, gen_params, energy_params, critic_params, z, key):
  """Minimise `E_q[E] − w_H · H_lb(q)`: the negated θ-free part of the NLL lower bound."""
  entropy, x = entropy_lower_bound(settings, nets, gen_params, critic_params, z, key)
  energy_fake = jnp.mean(jax.vmap(lambda x: nets.energy(energy_params, x))(x))
  loss = energy_fake - settings.entropy_weight * entropy
  return loss, {"energy_fake": energy_fake, "entropy": entropy, "loss": loss}


def critic_loss(settings, nets, critic_params, gen_params, z, key):
  """The critic maximises the same MI lower bound on fixed generator samples."""
  eps_key, mi_key = jax.random.split(key)
  x = jax.lax.stop_gradient(sample_fake(settings, nets, gen_params, z, eps_key))
  t_joint, t_marginal, scores = _critic_values(settings, nets, critic_params, x, z, mi_key)
  info = mi_lower_bound(settings, t_joint, t_marginal, scores)
  return -info, {"mi_bound": info, "loss": -info}


def latent_score(settings, generator_fn, z, key):
  """`∇_z[−log q(G(z))] = z + ∇_z ½ log det JᵀJ`.

  Exact when the Jacobian is dense anyway (small d): the `d·log s_min` surrogate's gradient
  jumps where singular values cross, which makes the penalty erratic. Matrix-free otherwise.
  """
  if _exact_latent_score(settings):
    return z + bounds.half_logdet_with_gradient(generator_fn, z)[1]
  return jax.grad(lambda z: 0.5 * jnp.sum(z**2) + half_logdet(settings, generator_fn, z, key))(z)


def _exact_latent_score(settings) -> bool:
  return settings.lower == "jacobian_exact" or settings.jacobian_method == "dense"


def upper_penalty(settings, nets, energy_params, gen_params, x_data, x_fake, z, key, latent_scores=None):
  """Batch mean of the θ-dependent KL upper-bound term (0 for plain minimax). `latent_scores`
  (`∇_z[−log q(G(z))]` per latent) saves the latent-Fisher penalty computing them again."""
  energy = lambda x: nets.energy(energy_params, x)
  keys = jax.random.split(key, x_data.shape[0])
  if settings.upper == "none":
    return jnp.zeros(())
  if settings.upper == "r1":
    return jnp.mean(jax.vmap(lambda x: bounds.r1_penalty(energy, x))(x_data))
  if settings.upper == "score_matching":
    return jnp.mean(jax.vmap(lambda x, k: bounds.score_matching_term(
        energy, x, key=k, num_probes=settings.num_probes))(x_fake, keys))
  if settings.upper == "latent_fisher":
    generator_fn = lambda z: nets.generator(jax.lax.stop_gradient(gen_params), z)

    def one(z, k, score):
      score_key, probe_key = jax.random.split(k)
      if score is None:
        score = latent_score(settings, generator_fn, z, score_key)
      return bounds.latent_fisher_penalty(energy, generator_fn, z, score, key=probe_key,
                                          num_probes=settings.num_probes)
    return jnp.mean(jax.vmap(one)(z, keys, latent_scores))
  # diffusion: the denoising part of the diffusion ELBO on data, through E(x, t).
  time_energy = lambda x, t: nets.time_energy(energy_params, x, t)
  return jnp.mean(jax.vmap(lambda x, k: bounds.diffusion_nll_bound(
      time_energy, x, key=k, num_t=settings.diffusion_num_t, gamma_min=settings.gamma_min,
      gamma_max=settings.gamma_max).diffusion)(x_data, keys))


def _with_defensive_samples(settings, energy, energies_fake, log_q, x_data, key):
  """Pool the generator's proposals with `defensive_samples` from a multi-scale kernel density
  around the data batch (docs/bounds.md §1.4): each keeps its own proposal's density, so Ẑ
  stays unbiased, and every neighbourhood of the data gets proposals whatever the generator does."""
  if not settings.defensive_samples:
    return energies_fake, log_q
  x0, log_q0 = bounds.data_kernel_proposal(key, x_data, settings.defensive_samples)
  return jnp.concatenate([energies_fake, energy(x0)]), jnp.concatenate([log_q, log_q0])


def energy_loss(settings, nets, energy_params, gen_params, x_data, z, step, key):
  """Minimise `E_data[E] − E_q[E] + λ_t · penalty` (penalty hinged at τ when asked); with
  importance weighting, `E_data[E] + log Ẑ_K + λ_t · penalty`. `ess` is the importance
  weights' effective sample size over K (1 without weighting)."""
  fake_key, pen_key = jax.random.split(key)
  latent_scores = None
  if settings.importance_weighting:
    generator_fn = lambda z: nets.generator(gen_params, z)
    if settings.upper == "latent_fisher" and _exact_latent_score(settings):  # one pass serves both
      log_q, log_q_scores, x_fake = jax.lax.stop_gradient(jax.vmap(
          lambda z: bounds.generator_log_density_and_score(generator_fn, z))(z))
      latent_scores = -log_q_scores
    else:
      log_q, x_fake = jax.lax.stop_gradient(jax.vmap(
          lambda z: bounds.generator_log_density(generator_fn, z, with_output=True))(z))
  else:
    x_fake = jax.lax.stop_gradient(sample_fake(settings, nets, gen_params, z, fake_key))
  energy = jax.vmap(lambda x: nets.energy(energy_params, x))
  energies_fake = energy(x_fake)
  energy_data, energy_fake = jnp.mean(energy(x_data)), jnp.mean(energies_fake)
  negative_phase, ess = -energy_fake, jnp.ones(())
  if settings.importance_weighting:
    negative_phase, ess = bounds.importance_log_partition(
        *_with_defensive_samples(settings, energy, energies_fake, log_q, x_data, fake_key))
  penalty = upper_penalty(settings, nets, energy_params, gen_params, x_data, x_fake, z, pen_key, latent_scores)
  weighted = upper_weight(settings, step) * penalty
  if settings.hinge is not None:
    weighted = jax.nn.relu(weighted - settings.hinge)
  loss = energy_data + negative_phase + weighted
  return loss, {"energy_data": energy_data, "energy_fake": energy_fake, "penalty": penalty, "ess": ess,
                "loss": loss}
