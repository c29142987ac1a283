"""Training: the config is unpacked here into plain values, models, optimisers and a jitted step."""

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bdbounds import checkpointing, evaluate, objectives, parallel, steps, writers
from bdbounds.data import get_toy_dataset
from bdbounds.models import Critic, Energy, Generator, TimeEnergy
from bdbounds.state import TrainState, create_player, create_train_state

# Keys that may change when a run is resumed: cadences and the step budget.
RESUMABLE_CHANGES = ("training.num_steps", "eval.", "checkpoint.", "log.")


class Experiment(NamedTuple):
  """What a config turns into: everything the loop, evaluation and loaders need."""
  settings: objectives.BoundSettings
  nets: objectives.Networks
  optimizers: dict
  dataset: Any
  latent_dim: int
  init_state: Callable[[jax.Array], TrainState]


def bound_settings(config) -> objectives.BoundSettings:
  fields = {f.name for f in dataclasses.fields(objectives.BoundSettings)}
  return objectives.BoundSettings(**{k: v for k, v in config.bounds.items() if k in fields})


def _optimizer(lr: float, config) -> optax.GradientTransformation:
  t = config.training
  if t.lr_decay:
    lr = optax.cosine_decay_schedule(lr, max(t.num_steps, 1), alpha=0.05)
  return optax.adam(lr, b1=t.b1, b2=t.b2)


def build_experiment(config) -> Experiment:
  settings = bound_settings(config)
  m = config.model
  dataset = get_toy_dataset(config.data.name)
  if settings.time_conditioned_energy:
    energy_module = TimeEnergy(m.energy_hidden, m.activation, m.time_frequencies, m.energy_base_std,
                               m.energy_input_scale)
    energy = lambda p, x: energy_module.apply(p, x, 0.0)
    time_energy = energy_module.apply
    energy_init = lambda key, x: energy_module.init(key, x, 0.0)
  else:
    energy_module = Energy(m.energy_hidden, m.activation, m.energy_base_std, m.energy_input_scale)
    energy, time_energy, energy_init = energy_module.apply, None, energy_module.init
  generator_module = Generator(m.generator_hidden, 2, m.activation, m.sigma_min, m.sigma_max, m.sigma_init,
                               m.generator_input_scale)
  critic_module = Critic(m.critic_hidden, m.activation) if settings.uses_critic else None
  nets = objectives.Networks(
      energy=energy, time_energy=time_energy, generator=generator_module.apply,
      sigma=lambda p: generator_module.apply(p, method=Generator.sigma),
      critic=critic_module.apply if critic_module else None)
  t = config.training
  optimizers = {"energy": _optimizer(t.energy_lr, config), "generator": _optimizer(t.generator_lr, config),
                "critic": _optimizer(t.critic_lr, config)}

  def init_state(key):
    k_e, k_g, k_c = jax.random.split(key, 3)
    x, z = jnp.zeros((2,)), jnp.zeros((m.latent_dim,))
    energy_player = create_player(energy_init(k_e, x), optimizers["energy"])
    generator_player = create_player(generator_module.init(k_g, z), optimizers["generator"])
    critic_player = (create_player(critic_module.init(k_c, x, z), optimizers["critic"])
                     if critic_module else None)
    return create_train_state(energy_player, generator_player, critic_player)

  return Experiment(settings, nets, optimizers, dataset, m.latent_dim, init_state)


def make_batch_fn(config, dataset) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`(key, step) -> [energy_steps, B, 2]`: the data position is the step, so resuming is exact."""
  t = config.training

  @jax.jit
  def batch_fn(key, step):
    flat = dataset.sample(jax.random.fold_in(key, step), t.energy_steps * t.batch_size)
    return flat.reshape(t.energy_steps, t.batch_size, -1)
  return batch_fn


def check_workdir_config(config, workdir: str) -> None:
  """Write config.json, or refuse a workdir that belongs to a different configuration."""
  path = os.path.join(workdir, "config.json")
  new = _flatten(json.loads(config.to_json_best_effort()))
  if os.path.exists(path):
    with open(path) as f:
      old = _flatten(json.load(f))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
      details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
      raise ValueError(f"workdir {workdir} holds a run with a different config ({details}). "
                       f"Use a new --workdir, or delete {path} to start over there.")
  writers.write_json(path, json.loads(config.to_json_best_effort()))


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    return {k2: v2 for k, v in tree.items() for k2, v2 in _flatten(v, f"{prefix}{k}.").items()}
  return {prefix[:-1]: tree}


def create_keys(seed: int) -> dict:
  """The run's named PRNG keys; evaluation of a saved step reuses the same `eval` key."""
  names = ("init", "data", "train", "eval")
  return dict(zip(names, jax.random.split(jax.random.PRNGKey(seed), len(names))))


class NonFiniteError(RuntimeError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train (resuming from the latest checkpoint in `workdir`), evaluate, and return the last report."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    check_workdir_config(config, workdir)
  exp = build_experiment(config)
  mesh = parallel.create_mesh()
  parallel.check_batch_size(config.training.batch_size, mesh)
  train_step = steps.make_train_step(
      exp.settings, exp.nets, exp.optimizers, latent_dim=exp.latent_dim,
      energy_steps=config.training.energy_steps, generator_steps=config.training.generator_steps,
      shard_batch=parallel.make_shard_constraint(mesh))
  step_fn = parallel.jit_train_step(train_step, mesh)

  keys = create_keys(config.seed)
  init_key, data_key, train_key, eval_key = keys["init"], keys["data"], keys["train"], keys["eval"]
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  state = jax.device_put(exp.init_state(init_key), parallel.replicated(mesh))
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(state)
    logging.info("resumed from step %d", int(state.step))
  batch_fn = make_batch_fn(config, exp.dataset)
  writer = writers.MetricWriter(workdir)
  first_step, num_steps = int(state.step), config.training.num_steps
  report = None

  progress = _progress(config, first_step, num_steps)
  last_log = time.perf_counter()
  for step in range(first_step, num_steps):
    batch = jax.device_put(batch_fn(data_key, step), parallel.sharded_along(mesh, 1))
    state, metrics = step_fn(state, batch, train_key)
    done = step + 1
    if done % config.log.every_steps == 0 or done == num_steps:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      metrics["train/seconds_per_step"] = (now - last_log) / config.log.every_steps
      last_log = now
      writer.write_scalars(done, metrics)
      _check_finite(config, state, ckpt, workdir)
      progress.set_postfix(gap=f"{metrics['train/energy_gap']:.3f}",
                           H=f"{metrics['train/generator/entropy']:.3f}")
    if done % config.checkpoint.every_steps == 0 or done == num_steps:
      ckpt.save(done, state)
    if done % config.eval.every_steps == 0 or done == num_steps:
      report = evaluate.evaluate_state(config, exp, state, workdir, key=eval_key, writer=writer)
    progress.update(1)
  progress.close()
  ckpt.wait()
  if report is None:  # nothing left to train: evaluate what is there
    report = evaluate.evaluate_state(config, exp, state, workdir, key=eval_key, writer=writer)
  writer.close()
  ckpt.close()
  if jax.process_index() == 0:
    print(evaluate.format_report(report, workdir))
  return report


def _check_finite(config, state, ckpt, workdir):
  """Stop on the first non-finite update (unless asked to skip), saving a snapshot first."""
  if int(state.skipped_updates) == 0 or config.training.on_nonfinite == "skip":
    return
  where = steps.describe_fault(jax.device_get(state.first_fault))
  snapshot = os.path.join(workdir, "diagnostics")
  diag = checkpointing.Checkpointer(snapshot, max_to_keep=1)
  diag.save(int(state.step), state, force=True)
  diag.close()
  raise NonFiniteError(f"non-finite loss or gradient at {where}. The update was not applied; the last "
                       f"finite state is saved in {snapshot}. Lower the learning rates or the bound "
                       f"weights, or set --config.training.on_nonfinite=skip to drop such updates.")


def _progress(config, first_step, num_steps):
  from tqdm.auto import tqdm
  disable = not config.log.progress_bar or jax.process_index() != 0
  return tqdm(total=num_steps, initial=first_step, disable=disable, dynamic_ncols=True, unit="step")
