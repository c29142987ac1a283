"""The upper side of the sandwich: `L_up = E_data[E] − E_q[E] + H_ub(q) + KL_ub`, and what it rests on.

  H_ub(q)  manifold generator: H(N_d) + E_z[½ log det JᵀJ] from the dense Jacobian, an upper bound
           for any generator (exact where it is injective); noisy generator: the leave-one-out
           bound of the Gaussian channel (`bounds.gaussian_channel_entropy_bounds`).
  KL_ub    the pairing's log-Sobolev bound at the constant C that training's λ stands for
           (`objectives.lsi_constant`); where q has an exact density (d = D) the relative Fisher
           information itself, ambient and latent, and the fraction of latents where G folds.

Its status (docs/bounds.md §1.5): `conditional` when it is a bound given the stated assumption (an
LSI constant), `estimate` when it is not a bound at all (no KL term trained, or a manifold q whose
ambient KL is infinite). The diffusion pairing's upper bound is the diffusion evaluator's, joined
in by `sandwich.assemble`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds import bounds, objectives
from bdbounds.evaluators.common import batched, mean_stderr

JACOBIAN_OUTPUTS_PER_BATCH = 4096  # generator outputs per batch of dense Jacobians (d per latent)


def make_upper_bound(exp, shared):
  """`(state, inputs) -> (report, None)`: `upper_penalty` (the training term, unweighted), `upper_weight`,
  `entropy_upper_bound`, `kl_upper_bound`, `game_nll_upper_bound`
  (each ± stderr), `game_upper_bound_status` and `_assumption`; with an exact generator density also
  `relative_fisher`, `latent_relative_fisher`, `generator_cross_entropy` (E_q[log q + E]) and
  `fold_fraction`."""
  s, nets, game = exp.settings, exp.nets, exp.game
  d, dim = exp.latent_dim, int(np.prod(exp.data_shape))
  square = not s.noisy_generator and d == dim  # q has an exact density on R^D
  jac_batch = max(1, JACOBIAN_OUTPUTS_PER_BATCH // (d * max(1, dim // 64)))
  latent_entropy = 0.5 * d * math.log(2 * math.pi * math.e)

  def square_terms(energy_params, gen_params, z):
    energy = lambda x: nets.energy(energy_params, x)
    generator = lambda z: nets.generator(gen_params, z)
    return jax.vmap(lambda z: bounds.generator_fisher_terms(energy, generator, z))(z)
  square_terms = batched(square_terms, 512)

  def manifold_half_logdets(gen_params, z):
    return (jax.vmap(lambda z: bounds.half_logdet_exact(lambda z: nets.generator(gen_params, z), z))(z),)
  manifold_half_logdets = batched(manifold_half_logdets, jac_batch)

  @jax.jit
  def channel_upper(gen_params, x, z):
    means = jax.vmap(lambda z: nets.generator(gen_params, z))(z)
    return bounds.gaussian_channel_entropy_bounds(x, means, nets.sigma(gen_params))[1]

  @jax.jit
  def fake_grad_norms(energy_params, x):
    return jax.vmap(lambda x: bounds.r1_penalty(lambda x: nets.energy(energy_params, x), x))(x)

  penalties = jax.jit(game.upper_penalties)

  def evaluate(state, inputs):
    energy_params, gen_params = state.energy.params, state.generator.params
    weight = float(game.upper_weight(inputs.step))
    constant = objectives.lsi_constant(s, weight)
    energy_data = np.asarray(shared.energies(energy_params, inputs.test), np.float64)
    energy_fake = np.asarray(shared.energies(energy_params, inputs.fake), np.float64)
    report, notes = {"upper_weight": weight}, []
    if constant is not None:
      report["lsi_constant_trained"] = constant

    # The entropy's upper side, per generator sample.
    if square:
      fisher, latent_fisher, log_q, sign = (np.asarray(a, np.float64) for a in square_terms(
          inputs.z, shared=(energy_params, gen_params)))
      # H(N_d) + log|det J| rather than −log q: the same mean without the noise of ½‖z‖².
      log_prior = -0.5 * np.sum(np.square(np.asarray(inputs.z, np.float64)), axis=1) - 0.5 * d * math.log(2 * math.pi)
      entropy_terms = latent_entropy + log_prior - log_q
      report["fold_fraction"] = float(min(np.mean(sign > 0), np.mean(sign < 0)))
      report["relative_fisher"], report["relative_fisher_stderr"] = mean_stderr(fisher)
      report["latent_relative_fisher"], report["latent_relative_fisher_stderr"] = mean_stderr(latent_fisher)
      report["generator_cross_entropy"], report["generator_cross_entropy_stderr"] = mean_stderr(log_q + energy_fake)
      if report["fold_fraction"] > 0:
        notes.append(f"G folds at {report['fold_fraction']:.1%} of latents, where the density used counts one "
                     f"preimage (the entropy bound holds regardless)")
    elif s.noisy_generator:
      entropy_terms = np.asarray(channel_upper(gen_params, inputs.fake, inputs.z), np.float64)
    else:
      entropy_terms = latent_entropy + np.asarray(manifold_half_logdets(inputs.z, shared=(gen_params,))[0],
                                                  np.float64)
    report["entropy_upper_bound"], report["entropy_upper_bound_stderr"] = mean_stderr(entropy_terms)

    # The training penalty itself, unweighted, as the energy's loss sees it (0 for none and diffusion's
    # data term per example), then the KL's upper side per generator sample where it has one.
    values = np.asarray(penalties(energy_params, gen_params, jnp.asarray(inputs.test[:len(inputs.fake)]),
                                  inputs.fake, inputs.z, inputs.keys["bounds"]), np.float64)
    report["upper_penalty"], report["upper_penalty_stderr"] = mean_stderr(values)
    status = "conditional"
    if s.upper == "diffusion":
      return report, None  # its upper bound is the diffusion evaluator's (sandwich.assemble)
    if s.upper == "none":
      kl_terms, status = np.zeros_like(entropy_terms), "estimate"
      notes.insert(0, "no KL upper bound is trained: KL(q ‖ p_θ) taken as 0, so this is low by that KL")
    elif square:
      kl_terms = 0.5 * constant * (latent_fisher if s.upper == "latent_fisher" else fisher)
      notes.insert(0, _lsi_assumption(s, constant, weight))
    else:
      sigma_term = dim / float(nets.sigma(gen_params)) ** 2 if s.noisy_generator else None  # J(q) ≤ D/σ²
      if s.upper == "r1":  # the bound needs ‖∇E‖² where q is, not on data where r1 trains it
        grad_norms = np.asarray(fake_grad_norms(energy_params, inputs.fake), np.float64)
        kl_terms = constant * (grad_norms + (sigma_term or 0.0))
      else:
        kl_terms = (constant * values if s.upper == "latent_fisher"
                    else 0.5 * constant * (values + (sigma_term or 0.0)))
      if s.upper == "latent_fisher" or s.noisy_generator:
        notes.insert(0, _lsi_assumption(s, constant, weight))
        if not s.noisy_generator:
          notes.append(f"on a manifold (d = {d} < D = {dim}) the NLL bounded is its surrogate E_data[E] + log Z_M")
      else:
        status = "estimate"
        notes.insert(0, f"q lies on a manifold (d = {d} < D = {dim}) and has no density: the ambient KL is "
                        f"infinite and J(q) is left out, so C·(the penalty's θ-part) is not a bound")
    report["kl_upper_bound"], report["kl_upper_bound_stderr"] = mean_stderr(kl_terms)
    report["game_nll_upper_bound"] = float(energy_data.mean() + np.mean(entropy_terms + kl_terms - energy_fake))
    paired = entropy_terms + kl_terms - energy_fake  # a sample's terms pair with its latent
    report["game_nll_upper_bound_stderr"] = float(np.hypot(mean_stderr(energy_data)[1], mean_stderr(paired)[1]))
    report["game_upper_bound_status"] = status
    report["game_upper_bound_assumption"] = "; ".join(notes)
    return report, None
  return evaluate


def _lsi_assumption(settings, constant, weight) -> str:
  """One line: which log-Sobolev inequality the pairing's bound rests on."""
  where = ("p_θ restricted to the generator's manifold, in latent coordinates" if settings.upper == "latent_fisher"
           else "p_θ")
  line = f"{where} satisfies LSI(C = {constant:.3g}), the constant λ_t = {weight:.3g} stands for"
  if settings.upper == "latent_fisher" and not settings.exact_latent_score:
    line += " (with the d·log s_min surrogate of the generator's score)"
  if settings.noisy_generator and settings.upper in ("score_matching", "r1"):
    line += "; J(q) ≤ D/σ²"
  return line
