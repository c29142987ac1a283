"""The pure train step `(state, batch, key) -> (state, metrics)`.

One step = `energy_steps` energy updates (one data batch each), then `generator_steps`
generator updates, each preceded by a critic update when the MI bound is used. The key is
folded with the step, so a resumed run draws exactly the same randomness.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bdbounds import objectives
from bdbounds.state import Player, TrainState

NETWORKS = ("energy", "generator", "critic")
TERMS = {"energy": objectives.ENERGY_TERMS, "generator": objectives.GENERATOR_TERMS,
         "critic": objectives.CRITIC_TERMS}


def describe_fault(first_fault) -> str:
  """Human-readable `(step, network, term)` of a recorded non-finite update."""
  step, network, term = (int(v) for v in first_fault)
  name = NETWORKS[network]
  terms = TERMS[name]
  term_name = terms[term] if term < len(terms) else "gradient"
  return f"step {step}: network '{name}', term '{term_name}'"


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _guarded_update(player: Player, optimizer, loss_fn, network: str):
  """One optimiser update, dropped (state kept) if any loss term or gradient is non-finite.

  Returns the new player, the terms, and the index of the offending term (len(terms) for a
  gradient, −1 if the update was finite).
  """
  (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(player.params)
  names = TERMS[network]
  term_ok = jnp.stack([jnp.all(jnp.isfinite(terms[n])) for n in names])
  ok = jnp.all(term_ok) & _all_finite(grads)
  updates, opt_state = optimizer.update(grads, player.opt_state, player.params)
  updated = Player(optax.apply_updates(player.params, updates), opt_state)
  player = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), updated, player)
  bad_term = jnp.where(ok, -1, jnp.where(jnp.all(term_ok), len(names), jnp.argmin(term_ok)))
  return player, terms, bad_term


def data_noise_std(step, initial: float, num_steps: int) -> jax.Array:
  """Std of the Gaussian noise added to the data at `step`: `initial (1 − step/num_steps)²`,
  then 0. Smoothing sharp data early gives the generator wide basins to find the modes in;
  the annealed target is the data itself well before the run ends."""
  if initial <= 0 or num_steps <= 0:
    return jnp.zeros(())
  return initial * jnp.square(jnp.clip(1.0 - step / num_steps, 0.0, 1.0))


def make_train_step(game: objectives.Objectives, optimizers: dict, *, latent_dim: int, energy_steps: int,
                    generator_steps: int, ema_decay: float = 0.0, data_noise: float = 0.0, data_noise_steps: int = 0,
                    shard_batch: Callable = lambda x: x) -> Callable:
  """Build the step of `game` (`objectives.make_objectives`). `shard_batch` constrains per-example
  arrays to the data axis; with `ema_decay > 0` the state's `generator_ema` follows the generator's
  parameters; with `data_noise > 0` the energy sees data plus annealed Gaussian noise (`data_noise_std`)."""
  settings = game.settings
  if energy_steps < 1 or generator_steps < 1:
    raise ValueError(f"training.energy_steps={energy_steps} and training.generator_steps={generator_steps} "
                     "must both be at least 1")

  def sample_latents(key, batch_size):
    return shard_batch(jax.random.normal(key, (batch_size, latent_dim)))

  def train_step(state: TrainState, batch: jax.Array, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    batch_size = batch.shape[1]
    faults = []  # (network index, bad term) per update, in order
    metrics = {}

    energy = state.energy
    noise_std = data_noise_std(state.step, data_noise, data_noise_steps)
    for i in range(energy_steps):
      z_key, loss_key, noise_key = jax.random.split(jax.random.fold_in(key, i), 3)
      z = sample_latents(z_key, batch_size)
      x_data = batch[i]
      if data_noise > 0:
        x_data = x_data + noise_std * jax.random.normal(noise_key, x_data.shape, x_data.dtype)
      loss_fn = lambda p: game.energy_loss(p, state.generator.params, x_data, z, state.step, loss_key)
      energy, terms, bad = _guarded_update(energy, optimizers["energy"], loss_fn, "energy")
      faults.append((0, bad))
    metrics.update({f"energy/{k}": v for k, v in terms.items()})

    generator, critic = state.generator, state.critic
    for j in range(generator_steps):
      gen_key = jax.random.fold_in(key, energy_steps + j)
      z_key, critic_key, loss_key = jax.random.split(gen_key, 3)
      z = sample_latents(z_key, batch_size)
      if settings.uses_critic:
        critic_fn = lambda p: game.critic_loss(p, generator.params, z, critic_key)
        critic, critic_terms, bad = _guarded_update(critic, optimizers["critic"], critic_fn, "critic")
        faults.append((2, bad))
        metrics["critic/mi_bound"] = critic_terms["mi_bound"]
      critic_params = critic.params if critic is not None else None
      loss_fn = lambda p: game.generator_loss(p, energy.params, critic_params, z, loss_key)
      generator, terms, bad = _guarded_update(generator, optimizers["generator"], loss_fn, "generator")
      faults.append((1, bad))
    metrics.update({f"generator/{k}": v for k, v in terms.items()})

    # Record the first fault of the run: (step, network, term).
    first_fault, skipped = state.first_fault, state.skipped_updates
    for network, bad in faults:
      is_bad = bad >= 0
      skipped = skipped + is_bad.astype(jnp.int32)
      record = jnp.stack([state.step, jnp.int32(network), bad.astype(jnp.int32)])
      first_fault = jnp.where(is_bad & (first_fault[0] < 0), record, first_fault)

    metrics.update({
        "energy_gap": metrics["energy/energy_data"] - metrics["energy/energy_fake"],
        "nll_lower_bound": objectives.nll_lower_bound({"energy_data": metrics["energy/energy_data"],
                                                       "energy_fake": metrics["generator/energy_fake"],
                                                       "entropy": metrics["generator/entropy"]}),
        "upper_weight": game.upper_weight(state.step),
        "data_noise": noise_std,
        "skipped_updates": skipped,
    })
    if settings.noisy_generator:
      metrics["sigma"] = game.nets.sigma(generator.params)
    generator_ema = state.generator_ema
    if generator_ema is not None:
      generator_ema = optax.incremental_update(generator.params, generator_ema, 1.0 - ema_decay)
    new_state = state.replace(step=state.step + 1, energy=energy, generator=generator, critic=critic,
                              generator_ema=generator_ema, skipped_updates=skipped, first_fault=first_fault)
    return new_state, {f"train/{k}": v for k, v in metrics.items()}

  return train_step
