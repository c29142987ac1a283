"""Images per second of the jitted train step on images, for each bound pairing.

    python bench/image_step.py                                   # CIFAR-10 sized (32×32×3), batch 64
    python bench/image_step.py --config configs/celeba.py        # CelebA-64 sized, ResNet pair
    python bench/image_step.py --pairs jacobian:latent_fisher --steps 10

Batches are synthetic uniform noise of the config's image shape (no data set is read), so the
same script runs on any machine; the models, bounds and step are exactly the trainer's.
"""

import argparse
import itertools
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # for `configs`
sys.path.insert(0, os.path.dirname(__file__))                      # for `stepping`

from bdbounds import objectives  # noqa: E402
from bdbounds.data import ImageDataset  # noqa: E402
from stepping import StepInfo, compiled_step, load_config  # noqa: E402

IMAGE_SHAPES = {"digits": None, "mnist": (32, 32, 1), "cifar10": (32, 32, 3), "celeba64": (64, 64, 3)}


def synthetic_dataset(shape, num=512) -> ImageDataset:
  images = np.random.default_rng(0).uniform(-1, 1, (num, *shape)).astype(np.float32)
  read = lambda indices: images[np.asarray(indices)]
  return ImageDataset("synthetic", tuple(shape), num, num, False, read, read, "uniform noise")


def image_dataset_for(config) -> ImageDataset:
  """Synthetic batches of the config's image shape."""
  return synthetic_dataset(IMAGE_SHAPES[config.data.name] or (config.data.image_size,) * 2 + (1,))


def time_pairing(config, lower: str, upper: str, num_steps: int) -> tuple[float, float, StepInfo]:
  """`(images per second, seconds per step, StepInfo)` of one pairing's step."""
  with config.unlocked():
    config.bounds.lower, config.bounds.upper = lower, upper
  run, info = compiled_step(config, image_dataset_for(config))
  seconds = float(np.median(run(num_steps)))
  return config.training.batch_size / seconds, seconds, info


def peak_memory_mb() -> float | None:
  """The accelerator's peak bytes in use so far (GPU/TPU runtimes report it; CPU does not)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/cifar10.py", help="an image config file")
  parser.add_argument("--pairs", nargs="*", help="lower:upper pairs (default: all)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per pairing")
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value, e.g. training.batch_size=128")
  parser.add_argument("--peak-tflops", type=float, help="the device's peak rate at the step's precision, for the "
                                                         "utilisation column (e.g. 67 for an H100's float32)")
  args = parser.parse_args()
  pairs = ([tuple(p.split(":")) for p in args.pairs] if args.pairs
           else list(itertools.product(objectives.LOWER_BOUNDS, objectives.UPPER_BOUNDS)))
  config = load_config(args.config, args.set)
  print(f"devices: {jax.devices()}  config {args.config}  batch {config.training.batch_size}  "
        f"{config.model.arch} width {config.model.width}  latent {config.model.latent_dim}\n")
  print("| lower | upper | images/s | GFLOP/step | GFLOP/s | utilisation | step memory (MB) | peak so far (MB) "
        "| compile (s) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for lower, upper in pairs:
    rate, seconds, info = time_pairing(config, lower, upper, args.steps)
    achieved = info.gflop / seconds
    utilisation = f"{100 * achieved / (1e3 * args.peak_tflops):.1f} %" if args.peak_tflops else "—"
    peak = peak_memory_mb()
    print(f"| {lower} | {upper} | {rate:.1f} | {info.gflop:.1f} | {achieved:.0f} | {utilisation} | "
          f"{info.memory_mb:.0f} | {'—' if peak is None else f'{peak:.0f}'} | {info.compile_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()
