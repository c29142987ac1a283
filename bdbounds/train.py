"""Training: the config is unpacked here into plain values, models, optimisers and a jitted step."""

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.experimental import multihost_utils

from bdbounds import checkpointing, evaluate, models, objectives, parallel, steps, writers
from bdbounds.data import IMAGE_DATASETS, TOY_DATASETS, ToyDataset, get_image_dataset, get_toy_dataset
from bdbounds.state import TrainState, create_player, create_train_state

# Keys that may change when a run is resumed: cadences and the step budget.
RESUMABLE_CHANGES = ("training.num_steps", "eval.", "checkpoint.", "log.")


class Experiment(NamedTuple):
  """What a config turns into: everything the loop, evaluation and loaders need."""
  settings: objectives.BoundSettings
  nets: objectives.Networks
  optimizers: dict
  dataset: Any                 # ToyDataset (2-D, sampled in JAX) or ImageDataset (read by index)
  data_shape: tuple            # one example's shape
  latent_dim: int
  init_state: Callable[[jax.Array], TrainState]

  @property
  def is_toy(self) -> bool:
    return isinstance(self.dataset, ToyDataset)


class ConfigError(ValueError):
  """The config (or the workdir it is pointed at) cannot run as given; the message names the key and
  what to use instead. The command line reports it in one line, without a traceback."""


NEGATIVE_PHASES = ("auto", "importance", "samples")


def bound_settings(config, data_dim: int) -> objectives.BoundSettings:
  """The bounds' settings; `bounds.negative_phase='auto'` weights the energy's negative phase by
  importance wherever the generator has a density on the data space (a manifold generator
  with `model.latent_dim` equal to the data dimension)."""
  phase = config.bounds.negative_phase
  if phase not in NEGATIVE_PHASES:
    raise ConfigError(f"bounds.negative_phase={phase!r} is not one of {NEGATIVE_PHASES}")
  has_density = config.bounds.lower != "mutual_info" and config.model.latent_dim == data_dim
  if phase == "importance" and not has_density:
    raise ConfigError(
        "bounds.negative_phase='importance' needs the generator's density on the data space, which exists "
        f"only for a manifold generator (bounds.lower='jacobian' or 'jacobian_exact') with model.latent_dim "
        f"equal to the data dimension ({data_dim}); got bounds.lower={config.bounds.lower!r}, "
        f"model.latent_dim={config.model.latent_dim}. Use bounds.negative_phase='auto' or 'samples'")
  fields = {f.name for f in dataclasses.fields(objectives.BoundSettings)} - {"importance_weighting"}
  try:
    return objectives.BoundSettings(**{k: v for k, v in config.bounds.items() if k in fields},
                                    importance_weighting=phase == "importance" or (phase == "auto" and has_density))
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _optimizer(lr: float, config) -> optax.GradientTransformation:
  t = config.training
  if t.lr_decay:
    lr = optax.cosine_decay_schedule(lr, max(t.num_steps, 1), alpha=0.05)
  return optax.adam(lr, b1=t.b1, b2=t.b2)


def _dataset(config):
  """The data set a config names: a 2-D toy density, or images (digits offline; TFDS)."""
  d = config.data
  if d.name in TOY_DATASETS:
    if config.model.arch != "mlp":
      raise ConfigError(f"data.name={d.name!r} is 2-D: use model.arch='mlp', not {config.model.arch!r}")
    return get_toy_dataset(d.name)
  if d.name in IMAGE_DATASETS:
    if config.model.arch == "mlp":
      raise ConfigError(f"data.name={d.name!r} holds images: set model.arch to one of "
                        f"{sorted(models.IMAGE_ARCHITECTURES)} (the image configs in configs/ do)")
    return get_image_dataset(d.name, data_dir=d.data_dir, image_size=d.image_size, flip=d.flip)
  raise ConfigError(f"unknown data set data.name={d.name!r}; choose one of {TOY_DATASETS + IMAGE_DATASETS}")


def _modules(config, settings, data_shape):
  """`(energy, generator, critic)` Linen modules; the energy is time-conditioned for the diffusion bound."""
  m = config.model
  for name in ("energy_hidden", "generator_hidden", "critic_hidden"):
    widths = m[name] if isinstance(m[name], (tuple, list)) else (m[name],)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
      raise ConfigError(f"model.{name}={m[name]!r}: hidden widths are positive integers, e.g. "
                        f"--config.model.{name}='(100, 100)'")
  if m.arch == "mlp":
    energy = (models.TimeEnergy(m.energy_hidden, m.activation, m.time_frequencies, m.energy_base_std,
                                m.energy_input_scale) if settings.time_conditioned_energy else
              models.Energy(m.energy_hidden, m.activation, m.energy_base_std, m.energy_input_scale))
    generator = models.Generator(m.generator_hidden, data_shape[-1], m.activation, m.sigma_min, m.sigma_max,
                                 m.sigma_init, m.generator_input_scale)
    return energy, generator, models.Critic(m.critic_hidden, m.activation)
  image = models.build_image_networks(
      m.arch, data_shape, width=m.width, act=m.activation, upsample=m.upsample,
      critic_hidden=m.critic_hidden, num_frequencies=m.time_frequencies, sigma_min=m.sigma_min,
      sigma_max=m.sigma_max, sigma_init=m.sigma_init)
  return (image.time_energy if settings.time_conditioned_energy else image.energy), image.generator, image.critic


def build_experiment(config, dataset=None) -> Experiment:
  """Models, optimisers, losses and data of a config; `dataset` replaces the one it names
  (benchmarks on synthetic images use this)."""
  dataset = _dataset(config) if dataset is None else dataset
  data_shape = (2,) if isinstance(dataset, ToyDataset) else tuple(dataset.image_shape)
  settings = bound_settings(config, math.prod(data_shape))
  energy_module, generator_module, critic_module = _modules(config, settings, data_shape)
  if settings.time_conditioned_energy:
    energy = lambda p, x: energy_module.apply(p, x, 0.0)
    time_energy = energy_module.apply
    energy_init = lambda key, x: energy_module.init(key, x, 0.0)
  else:
    energy, time_energy, energy_init = energy_module.apply, None, energy_module.init
  critic_module = critic_module if settings.uses_critic else None
  nets = objectives.Networks(
      energy=energy, time_energy=time_energy, generator=generator_module.apply,
      sigma=lambda p: generator_module.apply(p, method="sigma"),
      critic=critic_module.apply if critic_module else None)
  t = config.training
  optimizers = {"energy": _optimizer(t.energy_lr, config), "generator": _optimizer(t.generator_lr, config),
                "critic": _optimizer(t.critic_lr, config)}
  latent_dim = config.model.latent_dim

  def init_state(key):
    k_e, k_g, k_c = jax.random.split(key, 3)
    x, z = jnp.zeros(data_shape), jnp.zeros((latent_dim,))
    energy_player = create_player(energy_init(k_e, x), optimizers["energy"])
    generator_params = generator_module.init(k_g, z)
    generator_player = create_player(generator_params, optimizers["generator"])
    critic_player = (create_player(critic_module.init(k_c, x, z), optimizers["critic"])
                     if critic_module else None)
    # A copy: the state is donated to the step, and one buffer cannot be donated twice.
    ema = jax.tree_util.tree_map(jnp.copy, generator_params) if t.ema_decay > 0 else None
    return create_train_state(energy_player, generator_player, critic_player, generator_ema=ema)

  return Experiment(settings, nets, optimizers, dataset, data_shape, latent_dim, init_state)


def make_batch_fn(config, exp: Experiment, mesh) -> Callable[[int], jax.Array]:
  """`step -> [energy_steps, B, ...]`, one global array split over the mesh along B.

  The data position is a pure function of the step (toy data: a key folded with it; images:
  a seeded order per epoch), so a resumed run sees exactly the batches it would have seen.
  """
  t = config.training
  shape = (t.energy_steps, t.batch_size) + exp.data_shape
  if exp.is_toy:  # every process samples the whole batch (cheap) and keeps its slice
    data_key = create_keys(config.seed)["data"]
    sample = jax.jit(lambda step: exp.dataset.sample(jax.random.fold_in(data_key, step),
                                                     t.energy_steps * t.batch_size).reshape(shape))
    return lambda step: parallel.shard_global_batch(sample(step), mesh, axis=1)

  def read(step):  # each process reads only its own examples
    local = exp.dataset.train_batch(config.seed, step, t.batch_size, num_batches=t.energy_steps,
                                    process_index=jax.process_index(), process_count=jax.process_count())
    return parallel.make_global_batch(local, mesh, 1, shape)
  return read


def make_step_fn(config, exp: Experiment, mesh):
  """The config's train step, jitted over `mesh` with the state donated."""
  t = config.training
  return parallel.jit_train_step(steps.make_train_step(
      exp.settings, exp.nets, exp.optimizers, latent_dim=exp.latent_dim, energy_steps=t.energy_steps,
      generator_steps=t.generator_steps, ema_decay=t.ema_decay, data_noise=t.data_noise,
      data_noise_steps=round(t.data_noise_fraction * t.num_steps),
      shard_batch=parallel.make_shard_constraint(mesh)), mesh)


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
      raise ConfigError(f"workdir {workdir} holds a run with a different config ({details}). "
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


class Preempted(RuntimeError):
  """SIGTERM stopped the run after saving a checkpoint; the same command resumes it."""


class _TerminationWatch:
  """Turns SIGTERM (a scheduler's preemption notice, `kill`) into a flag the loop checks after
  each step, so the run stops between steps with a checkpoint rather than mid-write.

  Several processes agree on the step through JAX's preemption sync point (the distributed
  runtime listens for SIGTERM itself); one process uses its own handler.
  """

  def __init__(self):
    self._signalled = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    self._signalled = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train (resuming from the latest checkpoint in `workdir`), evaluate, and return the last report."""
  # Everything the config names is checked before the workdir is touched: a typo must not leave
  # a config.json behind that the corrected command would then be refused for.
  exp = build_experiment(config)
  mesh = parallel.create_mesh()
  try:
    parallel.check_batch_size(config.training.batch_size, mesh)
    evaluate.check_config(config, exp)
  except ValueError as e:  # including Inception weights of the wrong shape
    raise ConfigError(str(e)) from e
  keys = create_keys(config.seed)
  init_key, train_key, eval_key = keys["init"], keys["train"], keys["eval"]
  state = jax.device_put(exp.init_state(init_key), parallel.replicated(mesh))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    check_workdir_config(config, workdir)
  step_fn = make_step_fn(config, exp, mesh)

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.checkpoint.max_to_keep)
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(state)
    logging.info("resumed from step %d", int(state.step))
  batch_fn = make_batch_fn(config, exp, mesh)
  writer = writers.MetricWriter(workdir)
  first_step, num_steps = int(state.step), config.training.num_steps
  report = None

  progress = _progress(config, first_step, num_steps)
  last_log = time.perf_counter()
  with _TerminationWatch() as termination:
    for step in range(first_step, num_steps):
      batch = batch_fn(step)
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
      stop = termination.should_stop(done)
      if done % config.checkpoint.every_steps == 0 or done == num_steps or stop:
        ckpt.save(done, state)
      if stop:
        progress.close()
        ckpt.wait()
        writer.close()
        ckpt.close()
        raise Preempted(f"stopped by SIGTERM after step {done}; its checkpoint is saved in "
                        f"{os.path.join(workdir, 'checkpoints')}. Run the same command to resume.")
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
