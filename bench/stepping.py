"""What the step benchmarks share: config files with overrides, and the trainer's step compiled
ahead of time with its cost, ready to time."""

import ast
import importlib.util
import statistics
import time
from typing import NamedTuple

import jax

from bdbounds import experiment, parallel, train


def load_config(path: str, overrides: list[str]):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("")
  with config.unlocked():  # values as Python literals where they parse, else strings
    config.update_from_flattened_dict({key: _literal(value) for key, value in
                                       (item.split("=", 1) for item in overrides)})
  return config


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def median_seconds(fn, *args, repeats: int) -> float:
  """Median wall time of `fn(*args)` over `repeats` calls after one warm-up call, `block_until_ready`."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class StepInfo(NamedTuple):
  compile_s: float      # lowering and XLA compilation of the step
  gflop: float          # XLA's cost analysis of the compiled step (nan where the backend gives none)
  memory_mb: float      # the compiled step's arguments + outputs + temporaries (XLA's memory analysis)


def compiled_step(config, dataset=None):
  """`(run, info)`: the trainer's step for `config`, compiled ahead of time on its first batch
  (`StepInfo`), and `run(n)`, which times `n` more steps (each batch made beforehand,
  `block_until_ready`) and returns their seconds."""
  exp = experiment.create_experiment(config, dataset=dataset)
  mesh = parallel.create_mesh()
  batch_fn = train.make_batch_fn(exp, mesh)
  key = jax.random.PRNGKey(1)
  box = {"state": jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(mesh)), "i": 0}
  start = time.perf_counter()
  step = train.make_step_fn(exp, mesh).lower(box["state"], batch_fn(0), key).compile()
  compile_s = time.perf_counter() - start
  cost = step.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  memory = step.memory_analysis()
  memory_mb = (float("nan") if memory is None else
               (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes) / 2**20)
  info = StepInfo(compile_s, float(cost.get("flops", float("nan"))) / 1e9, memory_mb)

  def run(num_steps: int) -> list[float]:
    times = []
    for _ in range(num_steps):
      box["i"] += 1
      batch = batch_fn(box["i"])
      jax.block_until_ready(batch)
      start = time.perf_counter()
      box["state"], _ = step(box["state"], batch, key)
      jax.block_until_ready(box["state"].step)
      times.append(time.perf_counter() - start)
    return times
  run(1)  # the first call of an executable pays for its allocations
  return run, info


