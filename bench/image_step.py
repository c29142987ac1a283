"""Images per second of the jitted train step on images, for each bound pairing.

    python bench/image_step.py                                   # CIFAR-10 sized (32×32×3), batch 64
    python bench/image_step.py --config configs/celeba.py        # CelebA-64 sized, ResNet pair
    python bench/image_step.py --pairs jacobian:latent_fisher --steps 10

Batches are synthetic uniform noise of the config's image shape (no data set is read), so the
same script runs on any machine; the models, bounds and step are exactly the trainer's.
"""

import argparse
import ast
import importlib.util
import itertools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # for `configs`

from bdbounds import experiment, objectives, parallel, train  # noqa: E402
from bdbounds.data import ImageDataset  # noqa: E402

IMAGE_SHAPES = {"digits": None, "mnist": (32, 32, 1), "cifar10": (32, 32, 3), "celeba64": (64, 64, 3)}


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


def synthetic_dataset(shape, num=512) -> ImageDataset:
  images = np.random.default_rng(0).uniform(-1, 1, (num, *shape)).astype(np.float32)
  read = lambda indices: images[np.asarray(indices)]
  return ImageDataset("synthetic", tuple(shape), num, num, False, read, read, "uniform noise")


def compiled_step(config, dataset=None):
  """`(run, compile_s)`: the trainer's step for `config` compiled on its first batch, and `run(n)`,
  which times `n` more steps (batch made beforehand, `block_until_ready`) and returns their seconds."""
  exp = experiment.create_experiment(config, dataset=dataset)
  mesh = parallel.create_mesh()
  step = train.make_step_fn(exp, mesh)
  batch_fn = train.make_batch_fn(exp, mesh)
  key = jax.random.PRNGKey(1)
  box = {"state": jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(mesh)), "i": 0}
  start = time.perf_counter()
  box["state"], metrics = step(box["state"], batch_fn(0), key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start

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
  return run, compile_s


def image_dataset_for(config) -> ImageDataset:
  """Synthetic batches of the config's image shape."""
  return synthetic_dataset(IMAGE_SHAPES[config.data.name] or (config.data.image_size,) * 2 + (1,))


def time_pairing(config, lower: str, upper: str, num_steps: int) -> tuple[float, float]:
  """`(images per second, compile seconds)` of one pairing's step."""
  with config.unlocked():
    config.bounds.lower, config.bounds.upper = lower, upper
  run, compile_s = compiled_step(config, image_dataset_for(config))
  return config.training.batch_size / float(np.median(run(num_steps))), compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/cifar10.py", help="an image config file")
  parser.add_argument("--pairs", nargs="*", help="lower:upper pairs (default: all)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per pairing")
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value, e.g. training.batch_size=128")
  args = parser.parse_args()
  pairs = ([tuple(p.split(":")) for p in args.pairs] if args.pairs
           else list(itertools.product(objectives.LOWER_BOUNDS, objectives.UPPER_BOUNDS)))
  config = load_config(args.config, args.set)
  print(f"devices: {jax.devices()}  config {args.config}  batch {config.training.batch_size}  "
        f"{config.model.arch} width {config.model.width}  latent {config.model.latent_dim}\n")
  print("| lower | upper | images/s | compile (s) |\n|---|---|---:|---:|")
  for lower, upper in pairs:
    rate, compile_s = time_pairing(config, lower, upper, args.steps)
    print(f"| {lower} | {upper} | {rate:.1f} | {compile_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
