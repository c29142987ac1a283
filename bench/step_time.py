"""Median wall time of one jitted training step on 2-D data, for each bound pairing.

    python bench/step_time.py                       # every pairing, default toy config
    python bench/step_time.py --pairs jacobian:latent_fisher --steps 500

The step is timed alone (batch already on the device), warm, with `block_until_ready`.
"""

import argparse
import itertools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # for `configs`

from bdbounds import objectives, parallel, train  # noqa: E402
from configs import toy  # noqa: E402


def time_pairing(lower: str, upper: str, num_steps: int, preset: str) -> tuple[float, float]:
  config = toy.get_config(preset)
  with config.unlocked():
    config.bounds.lower, config.bounds.upper = lower, upper
  exp = train.build_experiment(config)
  mesh = parallel.create_mesh()
  step = train.make_step_fn(config, exp, mesh)
  state = jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(mesh))
  batch_fn = train.make_batch_fn(config, exp, mesh)
  key = jax.random.PRNGKey(1)
  batches = [batch_fn(i) for i in range(num_steps + 1)]
  start = time.perf_counter()
  state, metrics = step(state, batches[0], key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for batch in batches[1:]:
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(state.step)
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pairs", nargs="*", help="lower:upper pairs (default: all)")
  parser.add_argument("--steps", type=int, default=300, help="timed steps per pairing")
  parser.add_argument("--preset", default="", help="configs/toy.py preset, e.g. 'rings'")
  args = parser.parse_args()
  pairs = ([tuple(p.split(":")) for p in args.pairs] if args.pairs
           else list(itertools.product(objectives.LOWER_BOUNDS, objectives.UPPER_BOUNDS)))
  print(f"devices: {jax.devices()}  batch 200, MLP width 100\n")
  print("| lower | upper | median step (ms) | compile (s) |\n|---|---|---:|---:|")
  for lower, upper in pairs:
    ms, compile_s = time_pairing(lower, upper, args.steps, args.preset)
    print(f"| {lower} | {upper} | {ms:.2f} | {compile_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
