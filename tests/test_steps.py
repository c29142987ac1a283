"""The train step's fault handling: a non-finite loss term or gradient drops that update, is
counted, and is reported by step, network and term; the trainer stops on it or skips it as
configured."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bdbounds import experiment, objectives, steps, train
from bdbounds.state import create_player, create_train_state
from configs import toy
from tests.test_objectives import bound_settings

D, B = 2, 16


def energy(params, x):
  # sqrt(shift): NaN for shift < 0 (a non-finite loss), an infinite gradient at shift = 0.
  return 0.5 * params["theta"] * jnp.sum(jnp.square(x)) + jnp.sqrt(params["shift"])


NETS = objectives.Networks(energy=energy, time_energy=None, generator=lambda p, z: p["a"] * z,
                           sigma=lambda p: 0.1, critic=None)
OPTIMIZERS = {name: optax.adam(1e-2) for name in ("energy", "generator", "critic")}


def run_one_step(shift):
  game = objectives.make_objectives(bound_settings(), NETS)
  step = jax.jit(steps.make_train_step(game, OPTIMIZERS, latent_dim=D, energy_steps=1, generator_steps=1))
  energy_params = {"theta": jnp.asarray(2.0), "shift": jnp.asarray(shift)}
  state = create_train_state(create_player(energy_params, OPTIMIZERS["energy"]),
                             create_player({"a": jnp.asarray(0.7)}, OPTIMIZERS["generator"]), None)
  batch = jax.random.normal(jax.random.PRNGKey(0), (1, B, D))
  new_state, metrics = step(state, batch, jax.random.PRNGKey(1))
  return state, new_state, metrics


def test_a_finite_step_updates_every_player_and_records_no_fault():
  state, new_state, _ = run_one_step(1.0)
  assert int(new_state.skipped_updates) == 0 and list(new_state.first_fault) == [-1, -1, -1]
  assert float(new_state.energy.params["theta"]) != float(state.energy.params["theta"])
  assert float(new_state.generator.params["a"]) != float(state.generator.params["a"])


def test_a_non_finite_loss_term_drops_the_update_and_names_step_network_and_term():
  state, new_state, metrics = run_one_step(-1.0)
  # The energy's update (energy_data is NaN) and the generator's (its energy_fake is NaN) are dropped.
  assert int(new_state.skipped_updates) == 2
  assert int(new_state.step) == 1  # the step itself goes on
  chex.assert_trees_all_equal((state.energy, state.generator), (new_state.energy, new_state.generator))
  assert steps.describe_fault(new_state.first_fault) == "step 0: network 'energy', term 'energy_data'"
  assert np.isnan(metrics["train/energy/energy_data"])


def test_a_non_finite_gradient_of_a_finite_loss_is_named_as_the_gradient():
  _, new_state, metrics = run_one_step(0.0)  # sqrt(0) = 0, but its derivative is infinite
  assert np.isfinite(metrics["train/energy/loss"])
  assert int(new_state.skipped_updates) >= 1
  assert steps.describe_fault(new_state.first_fault) == "step 0: network 'energy', term 'gradient'"


def diverging_config(on_nonfinite):
  """Toy smoke with learning rates so large that Adam's first steps overflow the energy."""
  config = toy.get_config("smoke")
  with config.unlocked():
    config.training.energy_lr = 1e38
    config.training.generator_lr = 1e38
    config.training.on_nonfinite = on_nonfinite
    config.training.num_steps = 10
    config.log.every_steps = 1
    config.eval.every_steps = 1000
  return config


def test_the_trainer_stops_on_a_fault_naming_step_network_and_term(tmp_path):
  with pytest.raises(train.NonFiniteError, match=r"at step \d+: network '(energy|generator)', term '\w+'") as e:
    train.train_and_evaluate(diverging_config("stop"), str(tmp_path / "run"))
  assert "on_nonfinite=skip" in str(e.value)
  assert (tmp_path / "run" / "diagnostics").is_dir()  # the last finite state, for a post-mortem
  # The writer was closed on the way out: the records up to the fault are on disk.
  assert "train/energy_gap" in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_the_trainer_skips_and_counts_faults_when_asked(tmp_path):
  config = diverging_config("skip")
  with config.unlocked():
    config.eval.evaluators = "bound_terms"  # the overflowed energy has no log Z to integrate
  state, report = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == report["step"] == 10
  assert int(state.skipped_updates) > 0
  with pytest.raises(experiment.ConfigError, match="training.on_nonfinite='ignore' is not one of"):
    experiment.create_experiment(diverging_config("ignore"))
