"""The only place where bounds become losses: signs, weights and reductions.

The game (docs/bounds.md): the generator and the critic MAXIMISE the NLL lower bound
`E_data[E] − E_q[E] + H_lb(q)` (`nll_lower_bound`); the energy MINIMISES
`E_data[E] − E_q[E] + λ·KL_ub`, or with importance weighting `E_data[E] + log Ẑ + λ·KL_ub`
(`−E_q[E] + H(q)` replaced by an importance estimate of `log Z`). `E log Ẑ ≤ log Z` always, so without
the penalty that is a lower bound on the NLL; with the generator's K samples alone it is never below
the Gibbs term, but pooled with defensive samples it can be, and then adding even the exact KL need
not give an upper bound (docs/bounds.md §1.4): the importance phase is a better gradient, not a bound.

`make_objectives` resolves the settings once into plain functions: an unknown name fails
there, and the jitted step contains no string dispatch. Every loss is something an optimiser
minimises and returns `(loss, terms)`, `terms` holding the named, reduced pieces for metrics and
fault reports; the bound terms themselves (`entropy_bound`, `upper_penalties`) are per example,
so evaluation can attach a standard error to each mean.
"""

import dataclasses
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from bdbounds import bounds

LOWER_BOUNDS = ("jacobian", "jacobian_exact", "mutual_info")
UPPER_BOUNDS = ("none", "latent_fisher", "score_matching", "r1", "diffusion")
# InfoNCE takes the [B, B] scores; Barber–Agakov the encoder's log r(z_i | x_i), per-example terms.
MI_ESTIMATORS = {"barber_agakov": bounds.barber_agakov_terms, "infonce": None, "dv": bounds.dv_bound,
                 "nwj": bounds.nwj_bound}
WEIGHT_SCHEDULES = ("constant", "adaptive")
JACOBIAN_METHODS = ("dense", "lanczos", "lobpcg")


@dataclasses.dataclass(frozen=True)
class BoundSettings:
  """Everything the losses need, as plain values unpacked from `config.bounds` (whose comments in
  configs/base.py, the one source of defaults, say what each means)."""
  lower: str
  upper: str
  entropy_weight: float
  upper_weight: float
  weight_schedule: str                # constant: λ = upper_weight; adaptive: λ_t = scale (offset + t)^−power
  adaptive_weight_scale: float
  adaptive_weight_offset: float
  adaptive_weight_power: float
  hinge: float | None                 # τ in relu(λ·penalty − τ); None disables the hinge
  jacobian_method: str
  jacobian_num_iters: int
  jacobian_k: int
  mi_estimator: str
  num_probes: int
  diffusion_num_t: int
  gamma_min: float
  gamma_max: float
  importance_weighting: bool          # energy's negative phase: log Ẑ_K with exact log q (manifold generator)
  defensive_samples: int              # importance weighting: more proposals from a kernel density around the data

  def __post_init__(self):
    for name, value, choices in (("lower", self.lower, LOWER_BOUNDS), ("upper", self.upper, UPPER_BOUNDS),
                                 ("mi_estimator", self.mi_estimator, tuple(MI_ESTIMATORS)),
                                 ("weight_schedule", self.weight_schedule, WEIGHT_SCHEDULES),
                                 ("jacobian_method", self.jacobian_method, JACOBIAN_METHODS)):
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

  @property
  def differentiates_energy_gradient(self) -> bool:
    """The energy's loss holds its input gradient (R1, score matching, the diffusion denoiser
    σ∇E), so training differentiates the energy twice."""
    return self.upper in ("r1", "score_matching", "diffusion")

  @property
  def exact_latent_score(self) -> bool:
    """The latent score `∇_z[−log q(G(z))]` from the dense Jacobian (small d): the `d·log s_min`
    surrogate's gradient jumps where singular values cross, which makes the penalty erratic."""
    return self.lower == "jacobian_exact" or self.jacobian_method == "dense"


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


def nll_lower_bound(terms: Mapping) -> jax.Array:
  """`E_data[E] − E_q[E] + H_lb(q) ≤ NLL + log Z − log Z`: the unnormalised NLL lower bound from
  `terms["energy_data"]`, `terms["energy_fake"]` and `terms["entropy"]` (means or per example)."""
  return terms["energy_data"] - terms["energy_fake"] + terms["entropy"]


def importance_nll(energy_data, energies, log_q):
  """`(E_data[E] + log Ẑ_K, ess)`: the NLL with log Z replaced by its self-normalised importance
  estimate from proposals of log-density `log_q` (`bounds.importance_log_partition`)."""
  log_z, ess = bounds.importance_log_partition(energies, log_q)
  return energy_data + log_z, ess


class EntropyBound(NamedTuple):
  """`H_lb(q)` of a batch of latents, with the samples it was computed on."""
  value: jax.Array                # the batch's lower bound, differentiable in the generator's parameters
  per_example: jax.Array | None   # [B] terms whose mean is `value`; None for a batch MI estimator (not BA)
  x: jax.Array                    # the generator's samples of those latents


class Objectives(NamedTuple):
  """The game's functions for one `BoundSettings`: parameters first, batches of latents `z [B, d]`."""
  settings: BoundSettings
  nets: Networks
  sample_fake: Callable       # (gen_params, z, key) -> x [B, ...]: G(z) (+ σ ε for the noisy generator)
  entropy_bound: Callable     # (gen_params, critic_params, z, key) -> EntropyBound
  upper_penalties: Callable   # (energy_params, gen_params, x_data, x_fake, z, key, latent_scores=None) -> [B]
  upper_weight: Callable      # step -> λ_t
  energy_loss: Callable       # (energy_params, gen_params, x_data, z, step, key) -> (loss, terms)
  generator_loss: Callable    # (gen_params, energy_params, critic_params, z, key) -> (loss, terms)
  critic_loss: Callable       # (critic_params, gen_params, z, key) -> (loss, terms)

  def upper_penalty(self, *args, **kwargs) -> jax.Array:
    """Batch mean of `upper_penalties`: the θ-dependent KL upper-bound term (0 for plain minimax)."""
    return jnp.mean(self.upper_penalties(*args, **kwargs))


def _derangement(key, z):
  """Marginal pairs by a random non-zero roll: unlike a permutation, no pair stays joint."""
  shift = jax.random.randint(key, (), 1, z.shape[0])
  return jnp.roll(z, shift, axis=0)


def make_upper_weight(settings: BoundSettings) -> Callable:
  """`step -> λ_t`: constant, or the original code's adaptive decay `scale (offset + t)^−power`."""
  if settings.weight_schedule == "adaptive":
    scale, offset, power = (settings.adaptive_weight_scale, settings.adaptive_weight_offset,
                            settings.adaptive_weight_power)
    return lambda step: scale * (offset + step) ** -power
  return lambda step: jnp.asarray(settings.upper_weight, jnp.float32)


# The log-Sobolev constant a weight λ stands for (docs/bounds.md §4.7): the θ-term λ·penalty is
# C_z·pen for latent_fisher (pen = ½ FI_z), (C/2)(FI − J(q)) for score_matching, and the C·E‖∇E‖²
# of KL ≤ C·J(q) + C·E_q‖∇E‖² for r1.
LSI_CONSTANT_PER_WEIGHT = {"latent_fisher": 1.0, "score_matching": 2.0, "r1": 1.0}


def lsi_constant(settings: BoundSettings, weight) -> float | None:
  """The constant C (C_z for latent_fisher) that training's weight λ assumes; None outside the log-Sobolev family."""
  factor = LSI_CONSTANT_PER_WEIGHT.get(settings.upper)
  return None if factor is None else factor * float(weight)


def make_half_logdet(settings: BoundSettings) -> Callable:
  """`(generator_fn, z, key, with_output=False)`: per-example `½ log det JᵀJ` (jacobian_exact) or its
  singular-value lower bound (jacobian), and `G(z)` from the same forward pass `with_output`."""
  if settings.lower == "jacobian_exact":
    return lambda fn, z, key, with_output=False: bounds.half_logdet_exact(fn, z, with_output=with_output)
  return lambda fn, z, key, with_output=False: bounds.logdet_lower_bound(
      fn, z, key=key, num_iters=settings.jacobian_num_iters, k=settings.jacobian_k,
      method=settings.jacobian_method, with_output=with_output)


def make_objectives(settings: BoundSettings, nets: Networks) -> Objectives:
  """Resolve every name of `settings` into the functions of the game."""
  half_logdet = make_half_logdet(settings)
  upper_weight = make_upper_weight(settings)
  energy_of = lambda params: lambda x: nets.energy(params, x)
  batch_energy = lambda params, x: jax.vmap(energy_of(params))(x)

  def sample_fake(gen_params, z, key):
    x = jax.vmap(lambda z: nets.generator(gen_params, z))(z)
    if settings.noisy_generator:
      x = x + nets.sigma(gen_params) * jax.random.normal(key, x.shape, x.dtype)
    return x

  # The entropy lower bound: from the Jacobian's singular values, or H(x | z) + a bound on I(x; z).
  if settings.uses_critic:
    estimator = MI_ESTIMATORS[settings.mi_estimator]

    def mi_bound(critic_params, x, z, key):
      """`(I_lb, its per-example terms)`; the terms are None for a batch estimator."""
      critic = lambda x, z: nets.critic(critic_params, x, z)
      if estimator is bounds.barber_agakov_terms:  # the critic slot holds the encoder log r(z | x)
        terms = estimator(jax.vmap(critic)(x, z), z.shape[-1])
        return jnp.mean(terms), terms
      if estimator is None:  # InfoNCE: the [B, B] score matrix, joint pairs on the diagonal
        return bounds.infonce_bound(jax.vmap(lambda xi: jax.vmap(lambda zj: critic(xi, zj))(z))(x)), None
      return estimator(jax.vmap(critic)(x, z), jax.vmap(critic)(x, _derangement(key, z))), None

    def entropy_bound(gen_params, critic_params, z, key):
      _, eps_key, mi_key = jax.random.split(key, 3)
      x = sample_fake(gen_params, z, eps_key)
      info, info_terms = mi_bound(critic_params, x, z, mi_key)
      conditional = bounds.gaussian_conditional_entropy(x[0].size, nets.sigma(gen_params))
      return EntropyBound(info + conditional, None if info_terms is None else info_terms + conditional, x)

    def critic_loss(critic_params, gen_params, z, key):
      """The critic maximises the same MI lower bound on fixed generator samples."""
      eps_key, mi_key = jax.random.split(key)
      x = jax.lax.stop_gradient(sample_fake(gen_params, z, eps_key))
      info, _ = mi_bound(critic_params, x, z, mi_key)
      return -info, {"mi_bound": info, "loss": -info}
  else:
    critic_loss = None

    def entropy_bound(gen_params, critic_params, z, key):
      logdet_key, _, _ = jax.random.split(key, 3)
      keys = jax.random.split(logdet_key, z.shape[0])
      generator_fn = lambda z: nets.generator(gen_params, z)
      logdets, x = jax.vmap(lambda z, k: half_logdet(generator_fn, z, k, with_output=True))(z, keys)
      latent_entropy = 0.5 * z.shape[-1] * jnp.log(2 * jnp.pi * jnp.e)  # H(z) of N(0, I_d)
      return EntropyBound(latent_entropy + jnp.mean(logdets), latent_entropy + logdets, x)

  def latent_score(generator_fn, z, key):
    """`∇_z[−log q(G(z))] = z + ∇_z ½ log det JᵀJ`, exact or matrix-free (`exact_latent_score`)."""
    if settings.exact_latent_score:
      return z + bounds.half_logdet_with_gradient(generator_fn, z)[1]
    return jax.grad(lambda z: 0.5 * jnp.sum(z**2) + half_logdet(generator_fn, z, key))(z)

  # The θ-dependent KL upper-bound term, per example: `(energy_params, gen_params, x_data, x_fake, z,
  # keys, latent_scores) -> [B]`, one function per bound.
  def no_penalty(energy_params, gen_params, x_data, x_fake, z, keys, latent_scores):
    return jnp.zeros(x_data.shape[:1])

  def r1(energy_params, gen_params, x_data, x_fake, z, keys, latent_scores):
    return jax.vmap(lambda x: bounds.r1_penalty(energy_of(energy_params), x))(x_data)

  def score_matching(energy_params, gen_params, x_data, x_fake, z, keys, latent_scores):
    energy = energy_of(energy_params)
    return jax.vmap(lambda x, k: bounds.score_matching_term(energy, x, key=k, num_probes=settings.num_probes))(
        x_fake, keys)

  def latent_fisher(energy_params, gen_params, x_data, x_fake, z, keys, latent_scores):
    energy = energy_of(energy_params)
    generator_fn = lambda z: nets.generator(jax.lax.stop_gradient(gen_params), z)

    def one(z, k, score):
      score_key, probe_key = jax.random.split(k)
      if score is None:
        score = latent_score(generator_fn, z, score_key)
      return bounds.latent_fisher_penalty(energy, generator_fn, z, score, key=probe_key,
                                          num_probes=settings.num_probes)
    return jax.vmap(one)(z, keys, latent_scores)

  def diffusion(energy_params, gen_params, x_data, x_fake, z, keys, latent_scores):
    """The denoising part of the diffusion ELBO on data, through E(x, t)."""
    time_energy = lambda x, t: nets.time_energy(energy_params, x, t)
    return jax.vmap(lambda x, k: bounds.diffusion_nll_bound(
        time_energy, x, key=k, num_t=settings.diffusion_num_t, gamma_min=settings.gamma_min,
        gamma_max=settings.gamma_max).diffusion)(x_data, keys)

  penalty = {"none": no_penalty, "r1": r1, "score_matching": score_matching, "latent_fisher": latent_fisher,
             "diffusion": diffusion}[settings.upper]

  def upper_penalties(energy_params, gen_params, x_data, x_fake, z, key, latent_scores=None):
    """`latent_scores` (`∇_z[−log q(G(z))]` per latent) saves latent-Fisher computing them again."""
    keys = jax.random.split(key, x_data.shape[0])
    return penalty(energy_params, gen_params, x_data, x_fake, z, keys, latent_scores)

  def generator_loss(gen_params, energy_params, critic_params, z, key):
    """Minimise `E_q[E] − w_H · H_lb(q)`: the negated θ-free part of the NLL lower bound."""
    bound = entropy_bound(gen_params, critic_params, z, key)
    energy_fake = jnp.mean(batch_energy(energy_params, bound.x))
    loss = energy_fake - settings.entropy_weight * bound.value
    return loss, {"energy_fake": energy_fake, "entropy": bound.value, "loss": loss}

  def with_defensive_samples(energy_params, energies_fake, log_q, x_data, key):
    """Pool the generator's proposals with `defensive_samples` from a multi-scale kernel density
    around the data batch (docs/bounds.md §1.4): each keeps its own proposal's density, so Ẑ
    stays unbiased, and every neighbourhood of the data gets proposals whatever the generator does."""
    if not settings.defensive_samples:
      return energies_fake, log_q
    x0, log_q0 = bounds.data_kernel_proposal(key, x_data, settings.defensive_samples)
    return jnp.concatenate([energies_fake, batch_energy(energy_params, x0)]), jnp.concatenate([log_q, log_q0])

  def energy_loss(energy_params, gen_params, x_data, z, step, key):
    """Minimise `E_data[E] − E_q[E] + λ_t · penalty` (penalty hinged at τ when asked); with
    importance weighting, `E_data[E] + log Ẑ_K + λ_t · penalty`. `ess` is the importance
    weights' effective sample size over K (1 without weighting)."""
    fake_key, pen_key = jax.random.split(key)
    latent_scores = None
    if settings.importance_weighting:
      generator_fn = lambda z: nets.generator(gen_params, z)
      if settings.upper == "latent_fisher" and settings.exact_latent_score:  # one pass serves both
        log_q, log_q_scores, x_fake = jax.lax.stop_gradient(jax.vmap(
            lambda z: bounds.generator_log_density_and_score(generator_fn, z))(z))
        latent_scores = -log_q_scores
      else:
        log_q, x_fake = jax.lax.stop_gradient(jax.vmap(
            lambda z: bounds.generator_log_density(generator_fn, z, with_output=True))(z))
    else:
      x_fake = jax.lax.stop_gradient(sample_fake(gen_params, z, fake_key))
    energies_fake = batch_energy(energy_params, x_fake)
    energy_data, energy_fake = jnp.mean(batch_energy(energy_params, x_data)), jnp.mean(energies_fake)
    if settings.importance_weighting:
      nll, ess = importance_nll(energy_data, *with_defensive_samples(energy_params, energies_fake, log_q,
                                                                     x_data, fake_key))
    else:
      nll, ess = energy_data + -energy_fake, jnp.ones(())
    penalty = jnp.mean(upper_penalties(energy_params, gen_params, x_data, x_fake, z, pen_key, latent_scores))
    weighted = upper_weight(step) * penalty
    if settings.hinge is not None:
      weighted = jax.nn.relu(weighted - settings.hinge)
    loss = nll + weighted
    return loss, {"energy_data": energy_data, "energy_fake": energy_fake, "penalty": penalty, "ess": ess,
                  "loss": loss}

  return Objectives(settings, nets, sample_fake, entropy_bound, upper_penalties, upper_weight, energy_loss,
                    generator_loss, critic_loss)
