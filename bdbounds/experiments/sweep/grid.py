"""The grid of a sweep: its runs, their config overrides, and the flags every sweep shares."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from bdbounds.objectives import LOWER_BOUNDS, UPPER_BOUNDS

PAIRINGS = tuple(itertools.product(LOWER_BOUNDS, UPPER_BOUNDS))
DEFAULT_SEEDS = 3
CURVE_POINTS = 50  # training-metric records per run: the energy-gap curve's resolution

# Keys with their own flags: a --set on them would break the grid.
RESERVED_KEYS = ("seed", "data.name", "bounds.lower", "bounds.upper", "training.num_steps")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a sweep: a data set, a pairing of bounds and a seed."""
  dataset: str
  lower: str
  upper: str
  seed: int

  @property
  def pairing(self) -> str:
    return f"{self.lower}+{self.upper}"

  def run_dir(self, workdir: str) -> str:
    return os.path.join(workdir, self.dataset, self.pairing, f"seed{self.seed}")


def create_runs(datasets: Sequence[str], pairs: Sequence[tuple[str, str]], seeds: int) -> list[RunSpec]:
  """The grid, seed-major: a sweep stopped early has every data set and pairing at low seeds."""
  return [RunSpec(d, lower, upper, s) for s in range(seeds) for d in datasets for lower, upper in pairs]


def run_overrides(spec: RunSpec, num_steps: int, extra: Mapping[str, Any] = (),
                  checkpoint_every: int | None = None) -> dict:
  """The flattened config overrides of one run: its seed and bounds, evaluation at the last step
  only, a checkpoint every `checkpoint_every` steps (default: the last), CURVE_POINTS training
  records, no progress bar; then `extra` (the sweep's `--set`)."""
  overrides = {
      "seed": spec.seed,
      "bounds.lower": spec.lower,
      "bounds.upper": spec.upper,
      "training.num_steps": num_steps,
      "eval.every_steps": num_steps,
      "checkpoint.every_steps": min(checkpoint_every or num_steps, num_steps),
      "checkpoint.max_to_keep": 1,
      "log.every_steps": max(1, num_steps // CURVE_POINTS),
      "log.progress_bar": False,
  }
  overrides.update(dict(extra))
  return overrides


def parse_overrides(items: Iterable[str]) -> dict:
  """`["key=value", ...]` -> `{key: value}`, values read as Python literals, else strings."""
  overrides = {}
  for item in items:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(f"--set {item!r}: expected key=value, e.g. training.batch_size=100")
    if key in RESERVED_KEYS:
      raise ValueError(f"--set {key}: use the sweep's own flags (--seeds, --datasets, --pairs, --num_steps)")
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = text.strip()
    overrides[key] = value
  return overrides


def parse_pairs(text: str) -> list[tuple[str, str]]:
  """`"lower:upper,lower:upper"` -> pairs, checked against the bounds the objectives know."""
  pairs = []
  for item in filter(None, (p.strip() for p in text.split(","))):
    lower, sep, upper = item.partition(":")
    if not sep or lower not in LOWER_BOUNDS or upper not in UPPER_BOUNDS:
      raise ValueError(f"--pairs {item!r}: expected lower:upper with lower in {LOWER_BOUNDS} "
                       f"and upper in {UPPER_BOUNDS}")
    pairs.append((lower, upper))
  return pairs


def add_run_flags(parser: argparse.ArgumentParser, set_example: str) -> None:
  """The flags every sweep has: pairings, seeds, step budget, processes and config overrides."""
  parser.add_argument("--seeds", type=int, help=f"seeds 0..N−1 per data set and pairing (default {DEFAULT_SEEDS})")
  parser.add_argument("--num_steps", type=int, help="train steps per run (default: the config's)")
  parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help=f"config override for every run, repeatable (e.g. --set {set_example})")


def finish_run_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, default_pairs,
                     get_config: Callable) -> None:
  """Parse `--pairs` and `--set`, check the counts, and fill the defaults left: the seeds, and
  the step budget from `get_config()`."""
  try:
    args.pairs = parse_pairs(args.pairs) if args.pairs else list(default_pairs)
    args.overrides = parse_overrides(args.overrides)
  except ValueError as e:
    parser.error(str(e))
  args.seeds = DEFAULT_SEEDS if args.seeds is None else args.seeds
  if args.seeds < 1 or args.processes < 1 or (args.num_steps is not None and args.num_steps < 1):
    parser.error("--seeds, --processes and --num_steps must be positive")
  if args.num_steps is None:
    try:
      args.num_steps = int(get_config().training.num_steps)
    except ValueError as e:  # a config file that fails to load, with its name
      parser.error(f"--config: {e}")
