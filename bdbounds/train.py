"""Training: the loop over the jitted step, with checkpoints, metrics, evaluations and a clean stop.

The config becomes an `Experiment` in `experiment`; this module runs it in a workdir.
"""

import contextlib
import json
import logging
import os
import signal
import threading
import time
from typing import Callable

import jax
import ml_collections
from jax.experimental import multihost_utils

from bdbounds import checkpointing, evaluators, experiment, logs, parallel, steps, writers
from bdbounds.experiment import ConfigError, Experiment
from bdbounds.state import TrainState

logger = logging.getLogger(__name__)

# Keys that may change when a run is resumed: cadences and the step budget.
RESUMABLE_CHANGES = ("training.num_steps", "eval.", "checkpoint.", "log.")


def make_batch_fn(exp: Experiment, mesh) -> Callable[[int], jax.Array]:
  """`step -> [energy_steps, B, ...]`, one global array split over the mesh along B.

  The data position is a pure function of the step (toy data: a key folded with it; images:
  a seeded order per epoch), so a resumed run sees exactly the batches it would have seen.
  """
  t = exp.train
  shape = (t.energy_steps, t.batch_size) + exp.data_shape
  if exp.is_toy:  # every process samples the whole batch (cheap) and keeps its slice
    data_key = exp.keys["data"]
    sample = jax.jit(lambda step: exp.dataset.sample(jax.random.fold_in(data_key, step),
                                                     t.energy_steps * t.batch_size).reshape(shape))
    return lambda step: parallel.shard_global_batch(sample(step), mesh, axis=1)

  def read(step):  # each process reads only its own examples
    local = exp.dataset.train_batch(exp.seed, step, t.batch_size, num_batches=t.energy_steps,
                                    process_index=jax.process_index(), process_count=jax.process_count())
    return parallel.make_global_batch(local, mesh, 1, shape)
  return read


def make_step_fn(exp: Experiment, mesh):
  """The experiment's train step, jitted over `mesh` with the state donated."""
  t = exp.train
  return parallel.jit_train_step(steps.make_train_step(
      exp.game, exp.optimizers, latent_dim=exp.latent_dim, energy_steps=t.energy_steps,
      generator_steps=t.generator_steps, ema_decay=t.ema_decay, data_noise=t.data_noise,
      data_noise_steps=t.data_noise_steps, shard_batch=parallel.make_shard_constraint(mesh)), mesh)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> tuple[TrainState, dict]:
  """Train (resuming from the latest checkpoint in `workdir`), evaluate, and return the final state
  and the last evaluation's report."""
  # Everything the config names is checked before the workdir is touched: a typo must not leave
  # a config.json behind that the corrected command would then be refused for.
  exp = experiment.create_experiment(config)
  mesh = parallel.create_mesh()
  try:
    parallel.check_batch_size(exp.train.batch_size, mesh)
    evaluation = evaluators.make_evaluation(exp)
  except ValueError as e:  # including Inception weights of the wrong shape
    raise ConfigError(str(e)) from e
  keys = exp.keys
  state = jax.device_put(exp.init_state(keys["init"]), parallel.replicated(mesh))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    check_workdir_config(config, workdir)
  step_fn = make_step_fn(exp, mesh)
  t = exp.train

  with contextlib.ExitStack() as stack:  # the writer and the checkpointer close on every way out
    ckpt = stack.enter_context(checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                                          max_to_keep=t.checkpoints_kept))
    if ckpt.latest_step() is not None:
      state, _ = ckpt.restore(state)
      logger.info("resumed from step %d", int(state.step))
    batch_fn = make_batch_fn(exp, mesh)
    writer = stack.enter_context(writers.MetricWriter(workdir))
    evaluate = lambda state: evaluators.evaluate_and_write(evaluation, state, workdir, key=keys["eval"],
                                                           writer=writer)
    first_step, report = int(state.step), None
    progress = stack.enter_context(_progress(t, first_step))
    stack.enter_context(logs.beside_progress_bars())
    termination = stack.enter_context(_TerminationWatch())
    last_log = time.perf_counter()
    for step in range(first_step, t.num_steps):
      state, metrics = step_fn(state, batch_fn(step), keys["train"])
      done = step + 1
      if done % t.log_every == 0 or done == t.num_steps:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        metrics["train/seconds_per_step"] = (now - last_log) / t.log_every
        last_log = now
        writer.write_scalars(done, metrics)
        _check_finite(t, state, workdir)
        progress.set_postfix(gap=f"{metrics['train/energy_gap']:.3f}",
                             H=f"{metrics['train/generator/entropy']:.3f}")
      stop = termination.should_stop(done)
      if done % t.checkpoint_every == 0 or done == t.num_steps or stop:
        ckpt.save(done, state)
      if stop:
        ckpt.wait()
        raise Preempted(f"stopped by SIGTERM after step {done}; its checkpoint is saved in "
                        f"{os.path.join(workdir, 'checkpoints')}. Run the same command to resume.")
      if done % t.eval_every == 0 or done == t.num_steps:
        report = evaluate(state)
      progress.update(1)
    progress.close()
    ckpt.wait()
    if report is None:  # nothing left to train: evaluate what is there
      report = evaluate(state)
  if jax.process_index() == 0:
    print(evaluators.format_report(report, workdir))
  return state, report


def _check_finite(t: experiment.TrainSettings, state, workdir):
  """Stop on the first non-finite update (unless asked to skip), saving a snapshot first."""
  if int(state.skipped_updates) == 0 or t.on_nonfinite == "skip":
    return
  where = steps.describe_fault(jax.device_get(state.first_fault))
  snapshot = os.path.join(workdir, "diagnostics")
  with checkpointing.Checkpointer(snapshot, max_to_keep=1) as diag:
    diag.save(int(state.step), state, force=True)
  raise NonFiniteError(f"non-finite loss or gradient at {where}. The update was not applied; the last "
                       f"finite state is saved in {snapshot}. Lower the learning rates or the bound "
                       f"weights, or set --config.training.on_nonfinite=skip to drop such updates.")


def _progress(t: experiment.TrainSettings, first_step: int):
  from tqdm.auto import tqdm
  disable = not t.progress_bar or jax.process_index() != 0
  return tqdm(total=t.num_steps, initial=first_step, disable=disable, dynamic_ncols=True, unit="step")
