"""bdbounds against the original PyTorch code, timed alternately in one run on this machine.

    python bench/side_by_side.py --original path/to/ebm-bb                   # the image steps
    python bench/side_by_side.py --workloads toy --rounds 3
    EBM_BB_ORIGINAL=path/to/ebm-bb EBM_BB_PYTHON=path/to/python python bench/side_by_side.py

The original (its timing copy: `train/train_image_timed.py`, `train/train_toy_timed.py`; its README
says how to set up its environment) runs as a subprocess with its own interpreter, from a fresh
writable copy of its folder; then the same workload's bdbounds step is timed in this process. The
two alternate for `--rounds` rounds, so both see the machine in the same state, and each round's
ratio is bdbounds' median step time over the original's: below 1, bdbounds is faster.

Workloads, each at the original's settings:
  image      EBM_BB: Jacobian bound (2 solver iterations) + latent-Fisher penalty, CIFAR-10-shaped
             random batches of 64, DCGAN pair, latent 128 (bdbounds: configs/cifar10.py)
  image_0gp  EBM_0GP: Jacobian bound + R1 penalty on data (bdbounds: jacobian + r1)
  toy        25 Gaussians, batch 200, two hidden layers of 100, exact s_min + latent-Fisher
             (bdbounds: configs/toy.py with that energy and no defensive samples). The original's
             time includes its data sampling (about 3 ms); bdbounds' batches are made beforehand.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))                         # image_step, stepping
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))    # configs

import image_step  # noqa: E402
from stepping import compiled_step, load_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT_PYTHON = os.path.expanduser("~/.cache/ebm-bb-venv/bin/python")

# name: (original script and flags, bdbounds config file, overrides)
WORKLOADS = {
    "image": (["train/train_image_timed.py", "--EBM_type", "EBM_BB"], "configs/cifar10.py",
              ["bounds.lower=jacobian", "bounds.upper=latent_fisher", "bounds.jacobian_num_iters=2"]),
    "image_0gp": (["train/train_image_timed.py", "--EBM_type", "EBM_0GP"], "configs/cifar10.py",
                  ["bounds.lower=jacobian", "bounds.upper=r1", "bounds.jacobian_num_iters=2"]),
    "toy": (["train/train_toy_timed.py"], "configs/toy.py",
            ["bounds.lower=jacobian", "bounds.upper=latent_fisher", "model.energy_hidden=(100, 100)",
             "bounds.defensive_samples=0"]),
}
# Iterations of the original per round (its median leaves out the warm-up ones), and bdbounds steps.
ITERATIONS = {"image": (4, 1, 3), "image_0gp": (4, 1, 3), "toy": (401, 100, 300)}


def run_original(original: str, python: str, args: list[str], iters: int, warmup: int, threads: int) -> float:
  """The original's median seconds per iteration, from a fresh copy of its folder."""
  with tempfile.TemporaryDirectory() as tmp:
    copy = shutil.copytree(original, os.path.join(tmp, "ebm-bb"), ignore=shutil.ignore_patterns(".git"))
    command = [python, *args, "--iters", str(iters), "--warmup", str(warmup), "--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
  found = re.findall(r"^median=([0-9.]+) (ms|s)$", done.stdout, re.MULTILINE)
  if done.returncode or not found:
    raise SystemExit(f"the original failed ({' '.join(command)}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
  value, unit = found[-1]
  return float(value) / (1e3 if unit == "ms" else 1.0)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--original", default=os.environ.get("EBM_BB_ORIGINAL"),
                      help="the original's timing copy (default: $EBM_BB_ORIGINAL)")
  parser.add_argument("--python", default=os.environ.get("EBM_BB_PYTHON", DEFAULT_PYTHON),
                      help=f"the original's interpreter, with torch (default: $EBM_BB_PYTHON or {DEFAULT_PYTHON})")
  parser.add_argument("--workloads", nargs="*", default=["image", "image_0gp"], choices=sorted(WORKLOADS))
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the original's torch threads")
  parser.add_argument("--set", nargs="*", default=[], help="more bdbounds overrides key=value")
  args = parser.parse_args()
  if not args.original or not os.path.isdir(os.path.join(args.original, "train")):
    raise SystemExit("name the original's folder (the one with train/train_image_timed.py) with --original "
                     "or EBM_BB_ORIGINAL")
  if not os.path.exists(args.python):
    raise SystemExit(f"no interpreter at {args.python}: set up the original's environment (its README) "
                     "or pass --python")
  print("| workload | round | original (s/step) | bdbounds (s/step) | ratio |\n|---|---:|---:|---:|---:|")
  for name in args.workloads:
    script, config_file, overrides = WORKLOADS[name]
    iters, warmup, steps = ITERATIONS[name]
    config = load_config(os.path.join(ROOT, config_file), overrides + args.set)
    dataset = image_step.image_dataset_for(config) if name != "toy" else None
    run, _ = compiled_step(config, dataset)
    ratios = []
    for round_ in range(1, args.rounds + 1):
      original = run_original(args.original, args.python, script, iters, warmup, args.threads)
      ours = float(np.median(run(steps)))
      ratios.append(ours / original)
      print(f"| {name} | {round_} | {original:.4g} | {ours:.4g} | {ratios[-1]:.2f} |", flush=True)
    print(f"| {name} | median | | | **{np.median(ratios):.2f}** |", flush=True)


if __name__ == "__main__":
  main()
