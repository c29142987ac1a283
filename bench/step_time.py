"""Median wall time of one jitted training step on 2-D data, for each bound pairing.

    python bench/step_time.py                       # every pairing, default toy config
    python bench/step_time.py --pairs jacobian:latent_fisher --steps 500

The step is timed alone (batch already on the device), warm, with `block_until_ready`. Each row
also gives the step's arithmetic (XLA's cost analysis of the compiled step) and the rate it ran
at; the header gives the rate of one 400×100×100 matrix product, the shape of the toy networks'
layers, as this machine's yardstick: a step cannot run much faster than its arithmetic at that rate.
"""

import argparse
import itertools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # for `configs`
sys.path.insert(0, os.path.dirname(__file__))                      # for `stepping`

from bdbounds import objectives  # noqa: E402
from configs import toy  # noqa: E402
from stepping import compiled_step  # noqa: E402


def time_pairing(lower: str, upper: str, num_steps: int, preset: str) -> tuple[float, float, float]:
  """`(median ms per step, GFLOP per step, compile s)`."""
  config = toy.get_config(preset)
  with config.unlocked():
    config.bounds.lower, config.bounds.upper = lower, upper
  run, info = compiled_step(config)
  return float(np.median(run(num_steps))) * 1e3, info.gflop, info.compile_s


def matmul_gflops(repeats: int = 2000) -> float:
  """GFLOP/s of one jitted [400, 100] × [100, 100] product, the median of 5 timings."""
  a, b = jax.numpy.ones((400, 100)), jax.numpy.ones((100, 100))
  product = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(product(a, b))
  rates = []
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(repeats):
      out = product(a, b)
    jax.block_until_ready(out)
    rates.append(2 * 400 * 100 * 100 * repeats / (time.perf_counter() - start) / 1e9)
  return float(np.median(rates))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pairs", nargs="*", help="lower:upper pairs (default: all)")
  parser.add_argument("--steps", type=int, default=300, help="timed steps per pairing")
  parser.add_argument("--preset", default="", help="configs/toy.py preset, e.g. 'rings'")
  args = parser.parse_args()
  pairs = ([tuple(p.split(":")) for p in args.pairs] if args.pairs
           else list(itertools.product(objectives.LOWER_BOUNDS, objectives.UPPER_BOUNDS)))
  print(f"devices: {jax.devices()}  batch 200, MLP width 100")
  print(f"yardstick: a 400×100×100 matrix product runs at {matmul_gflops():.0f} GFLOP/s\n")
  print("| lower | upper | median step (ms) | GFLOP per step | GFLOP/s | compile (s) |\n"
        "|---|---|---:|---:|---:|---:|")
  for lower, upper in pairs:
    ms, gflop, compile_s = time_pairing(lower, upper, args.steps, args.preset)
    print(f"| {lower} | {upper} | {ms:.2f} | {gflop:.3f} | {gflop / ms * 1e3:.0f} | {compile_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
