"""The training state: parameters and optimiser states of every player, and fault records."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class Player:
  """One network's parameters and its optimiser state."""
  params: Any
  opt_state: Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32: completed train steps
  energy: Player
  generator: Player
  critic: Player | None
  generator_ema: Any          # exponential moving average of the generator's parameters, or None
  skipped_updates: jax.Array  # int32: updates dropped because a loss or gradient was non-finite
  first_fault: jax.Array      # int32 [3]: (step, network index, term index) of the first fault, −1 if none


def create_player(params, optimizer: optax.GradientTransformation) -> Player:
  return Player(params=params, opt_state=optimizer.init(params))


def create_train_state(energy: Player, generator: Player, critic: Player | None, *,
                       generator_ema=None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), energy=energy, generator=generator, critic=critic,
                    generator_ema=generator_ema, skipped_updates=jnp.zeros((), jnp.int32),
                    first_fault=jnp.full((3,), -1, jnp.int32))
