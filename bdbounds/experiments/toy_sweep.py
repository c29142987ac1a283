"""Every bound pairing on every 2-D data set, over several seeds: quality, stability and cost.

    python -m bdbounds.experiments.toy_sweep --workdir=runs/sweep                  # the full sweep
    python -m bdbounds.experiments.toy_sweep --workdir=runs/quick --quick          # 28 min on 2 cores
    python -m bdbounds.experiments.toy_sweep --workdir=runs/sweep --datasets=rings,moons \\
        --pairs=jacobian:none,jacobian:r1 --seeds=2 --num_steps=5000 --set=bounds.upper_weight=0.1

The full sweep is lower ∈ {jacobian, jacobian_exact, mutual_info} × upper ∈ {none, latent_fisher,
score_matching, r1, diffusion} (15 pairings) on the 9 data sets of `configs/toy.py`, 3 seeds each
(405 runs) at the config's step budget (30 000 steps).

`--quick` runs the same 15 pairings on 4 data sets (8gaussians, 25gaussians, rings, moons) with
2 seeds (0 and 1) and 2 000 steps each: 120 runs, otherwise configured exactly as the full sweep
(batch 200, exact quadrature at the end). On a 2-core CPU with `--processes=2` it took 28 minutes
with the 2-D defaults of `configs/toy.py` (three-layer energy, 400 defensive samples), starting
from an empty compilation cache. A part of the grid is not a fair sample of that time: the
first run of each pairing (and of 25gaussians, whose energy compiles separately) pays the
compilation, 10–15 s, so a sweep over fewer data sets or seeds spends a larger share on it.
At 2 000 steps the models are not finished (25gaussians' modes are not resolved yet), and the
mutual_info pairings, which cannot use the importance-weighted negative phase of these
defaults, mostly run away and count as collapsed (below; docs/results.md has the numbers).
Any flag given explicitly replaces the quick choice (`--quick --seeds=1`).

Each run is the real trainer, `train.train_and_evaluate`, on `configs/toy.py:<data set>` with
these overrides (then `--set key=value`, which may change anything but the seed, the data
set, the bounds and the step budget, which have their own flags):
  seed=<k>, bounds.lower/upper, training.num_steps, evaluation and checkpoint at the last step
  only, a training-metric record every num_steps/50 steps (the energy-gap curve), no progress
  bar. The run directory is `<workdir>/<data set>/<lower>+<upper>/seed<k>` and holds the usual
  trainer outputs plus:
  - `result.json`: the run's measures (below);
  - `density.npz`: the learned log-density at temperature 1 (exp(−E)/Z, Z by the quadrature of
    the evaluation) and the data's, on a 128² grid over the data's box;
  - `train.log`: what the trainer printed.

Measures per run (`result.json`, one row of `results.csv`):
  nll, kl_data_model   exact test NLL and KL(p_data ‖ p_θ), nats (quadrature; the evaluation report)
  sandwich_gap         exact NLL − the NLL lower bound E_data[E] − E_q[E] + H_lb(q)
  diverged             training stopped on a non-finite loss or gradient (or raised anything
                       else: `error` holds the message), or the final NLL or KL is not finite
  collapsed            not diverged, and the test NLL is no better than that of the Gaussian with
                       the data's mean and covariance (see "Collapse" below)
  converged            neither diverged nor collapsed
  seconds_per_step     median of the trainer's `train/seconds_per_step` records, leaving out the
                       first (it includes compilation)
  energy_gap_curve     steps and `train/energy_gap` (E_data[E] − E_q[E] on the training batch)
  wall_s               wall time of the run: training, evaluation and the density grid

Collapse. A run has collapsed when its test NLL is at least ½ log det(2πe Σ), the NLL of the
moment-matched Gaussian N(μ_data, Σ_data) (μ, Σ from 100 000 data samples). Since
NLL = H(p_data) + KL(p_data ‖ p_θ), this says KL(p_data ‖ p_θ) ≥ KL(p_data ‖ N(μ, Σ)), and the
moment-matched Gaussian is the best of all Gaussians in that KL: the model has learned nothing
about the data beyond its first two moments. It needs no data density (pinwheel and 2spirals have
none), costs one covariance, and adapts to each data set, unlike a fixed number of nats: the
Gaussian's KL is 1.43 nats on 8gaussians, 0.97 on rings and 0.90 on moons but 4.85 on
25gaussians, whose modes are sharp. The failures it is meant to catch land above it: an energy
gone flat leaves the model's Gaussian base term (std 5), far broader than the data; a density
that keeps k of K equal modes pays at least log(K/k) nats, and far more unless it leaves mass
on the others. Runs just above it are often merely too smooth; `kl_data_model` and
`reference_nll` are in every result, for another threshold.

Outputs in the workdir (rebuilt from every `result.json` under it after each invocation):
  results.csv     one row per run
  results.md      per data set × pairing: mean ± std over seeds of KL, NLL and the sandwich gap
                  (over runs that did not diverge), converged fraction and ms per step; then the
                  stability table (converged fraction per data set, upper=none against each
                  upper bound); then the runs that raised
  densities.png   rows data sets, columns the data density and every pairing: the learned density
                  at temperature 1 of the lowest seed
  energy_gap.png  one panel per data set: the energy gap over training, mean over the seeds that
                  finished, per pairing
  sweep.json      the sweep's step budget and overrides; a later invocation with others is refused
  compilation_cache/  XLA's persistent cache, shared by the workers: a pairing's train step is
                  compiled once for all its data sets and seeds, not once per run

Resuming: a run whose `result.json` exists is skipped, so the same command continues a killed
sweep; a run cut short before its last checkpoint starts again from scratch. Delete a run's
`result.json` to train it again.

Parallelism: `--processes` worker processes (default: the CPU count; about 0.8 GB of memory
each), started with "spawn", each limited to one XLA and BLAS thread and training one run at a
time, so JAX starts once per worker and per-step times are comparable between runs. When the
workers are at least as many as the cores (the default), each is pinned to one core on Linux:
XLA's CPU runtime keeps a second thread busy besides, and unpinned workers then crowd each other
(about 20 % slower per step with two workers on two cores).
"""

from __future__ import annotations

import argparse
import ast
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from bdbounds.data import TOY_DATASETS
from bdbounds.experiments import csv_text
from bdbounds.objectives import LOWER_BOUNDS, UPPER_BOUNDS

PAIRINGS = tuple(itertools.product(LOWER_BOUNDS, UPPER_BOUNDS))
DEFAULT_SEEDS = 3
QUICK_DATASETS = ("8gaussians", "25gaussians", "rings", "moons")
QUICK_SEEDS = 2
QUICK_STEPS = 2000

CURVE_POINTS = 50           # training-metric records per run: the energy-gap curve's resolution
DENSITY_RESOLUTION = 128    # cells per side of the stored density grid
REFERENCE_SAMPLES = 100_000  # data samples for the collapse reference and the plotting box

RESULT_FILE = "result.json"
DENSITY_FILE = "density.npz"
SWEEP_FILE = "sweep.json"
LOG_FILE = "train.log"
CACHE_DIR = "compilation_cache"

# Keys with their own flags: a --set on them would break the grid.
RESERVED_KEYS = ("seed", "data.name", "bounds.lower", "bounds.upper", "training.num_steps")

# One thread per worker: the workers share the cores, and per-step times stay comparable.
WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several workers may share one accelerator
}

CSV_COLUMNS = ("dataset", "lower", "upper", "seed", "num_steps", "status", "converged", "diverged", "collapsed",
               "kl_data_model", "nll", "sandwich_gap", "nll_lower_bound", "test_entropy", "reference_nll",
               "quadrature_converged", "last_step", "seconds_per_step", "wall_s", "error")


# ---------------------------------------------------------------------------------------------
# The grid of runs


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the sweep: a data set, a pairing of bounds and a seed."""
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


def run_overrides(spec: RunSpec, num_steps: int, extra: Mapping[str, Any] = (), checkpoint_every: int | None = None) -> dict:
  """The flattened config overrides of one run, on top of its config (`configs/toy.py:<data set>`):
  evaluation at the last step only, a checkpoint every `checkpoint_every` steps (default: the last)."""
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


def config_module(name: str):
  """`configs/<name>.py`, imported (also when run from outside the repository: configs/ sits next
  to the package)."""
  if importlib.util.find_spec("configs") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  return importlib.import_module(f"configs.{name}")


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def create_config(spec: RunSpec, num_steps: int, extra: Mapping[str, Any] = ()):
  """`configs/toy.py:<data set>` with the run's overrides, locked."""
  return apply_overrides(config_module("toy").get_config(spec.dataset), run_overrides(spec, num_steps, extra))


def apply_overrides(config, overrides: Mapping[str, Any]):
  """`config` with flattened `overrides` applied, locked; unknown keys are refused."""
  unknown = [k for k in overrides if not _has_key(config, k)]
  if unknown:
    raise ValueError(f"unknown config keys {unknown}; every key is listed in configs/base.py")
  with config.unlocked():
    config.update_from_flattened_dict(overrides)
  return config.lock()


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


# ---------------------------------------------------------------------------------------------
# Measures of one run (pure)


def gaussian_reference_nll(covariance: np.ndarray) -> float:
  """½ log det(2πe Σ): the NLL of data with covariance Σ under the Gaussian with their own mean
  and covariance (its cross-entropy on them equals its entropy). The collapse threshold."""
  covariance = np.atleast_2d(np.asarray(covariance, np.float64))
  sign, logdet = np.linalg.slogdet(2.0 * math.pi * math.e * covariance)
  if sign <= 0:
    raise ValueError("the data covariance is singular")
  return 0.5 * float(logdet)


def is_collapsed(nll: float, reference_nll: float) -> bool:
  """The test NLL is no better than the moment-matched Gaussian's: KL(p_data ‖ p_θ) is at least
  KL(p_data ‖ N(μ, Σ)), the smallest KL any Gaussian reaches."""
  return bool(nll >= reference_nll)


def is_finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def train_records(records: Iterable[Mapping]) -> list[Mapping]:
  """Training records (evaluation scalars share their step), the last one of each step kept."""
  by_step = {}
  for r in records:
    if "train/energy_gap" in r:
      by_step[int(r["step"])] = r
  return [by_step[s] for s in sorted(by_step)]


def summarize_run(spec: RunSpec, *, num_steps: int, report: Mapping | None, records: Iterable[Mapping],
                  error: str | None, wall_s: float, reference_nll: float) -> dict:
  """The measures of one run from its evaluation report (None if training raised), its
  training records (`metrics.jsonl`), the error it raised, and the collapse reference."""
  records = train_records(records)
  report = dict(report or {})
  nll, kl = report.get("nll"), report.get("kl_data_model")
  diverged = (error is not None or not report or not is_finite(nll)
              or ("kl_data_model" in report and not is_finite(kl)))
  if error is None and report and diverged:
    error = "non-finite final evaluation: " + ", ".join(
        f"{k}={report.get(k)}" for k in ("nll", "kl_data_model") if k in report)
  collapsed = False if diverged else is_collapsed(nll, reference_nll)
  converged = not diverged and not collapsed
  get = lambda k: report.get(k) if is_finite(report.get(k)) else None
  return {
      "dataset": spec.dataset, "lower": spec.lower, "upper": spec.upper, "pairing": spec.pairing,
      "seed": spec.seed, "num_steps": num_steps,
      "status": "diverged" if diverged else "collapsed" if collapsed else "converged",
      "converged": converged, "diverged": diverged, "collapsed": collapsed,
      "kl_data_model": get("kl_data_model"), "nll": get("nll"), "sandwich_gap": get("sandwich_gap"),
      "nll_lower_bound": get("nll_lower_bound"), "test_entropy": get("test_entropy"),
      "reference_nll": reference_nll,
      "quadrature_converged": report.get("quadrature_converged"),
      "last_step": int(records[-1]["step"]) if records else 0,
      "seconds_per_step": median_seconds_per_step(records),
      "wall_s": float(wall_s),
      "error": error,
      "energy_gap_curve": energy_gap_curve(records),
  }


def median_seconds_per_step(records: Sequence[Mapping]) -> float | None:
  """Median of the training records' step times, leaving out the first (it includes compilation)."""
  times = [r["train/seconds_per_step"] for r in records[1:] if is_finite(r.get("train/seconds_per_step"))]
  return float(np.median(times)) if times else None


def energy_gap_curve(records: Sequence[Mapping]) -> dict:
  return {"step": [int(r["step"]) for r in records], "energy_gap": [float(r["train/energy_gap"]) for r in records]}


# ---------------------------------------------------------------------------------------------
# Running (in the worker processes)


@functools.lru_cache(maxsize=None)
def data_reference(dataset: str) -> tuple[float, np.ndarray, np.ndarray]:
  """`(reference_nll, lo, hi)`: the collapse threshold and the box the densities are drawn on
  (0.1 % and 99.9 % quantiles of the data, padded by 10 %), from a fixed sample."""
  import jax
  from bdbounds.data import get_toy_dataset
  x = np.asarray(get_toy_dataset(dataset).sample(jax.random.PRNGKey(0), REFERENCE_SAMPLES), np.float64)
  lo, hi = np.quantile(x, [0.001, 0.999], axis=0)
  pad = 0.1 * (hi - lo)
  return gaussian_reference_nll(np.cov(x.T)), lo - pad, hi + pad


def clear_unfinished(run_dir: str) -> None:
  """A run without a result and without a checkpoint was cut short: start it afresh, so its
  metrics file does not hold two attempts. With a checkpoint the trainer resumes from it."""
  checkpoints = os.path.join(run_dir, "checkpoints")
  has_checkpoint = os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))
  if os.path.isdir(run_dir) and not has_checkpoint:
    shutil.rmtree(run_dir)


def _save_density(spec: RunSpec, run_dir: str, log_z: float) -> None:
  from bdbounds import evaluate, metrics
  from bdbounds.data import get_toy_dataset
  _, lo, hi = data_reference(spec.dataset)
  energy = evaluate.load_energy(run_dir)
  xs, ys, model = metrics.density_on_grid(energy, log_z, lo, hi, DENSITY_RESOLUTION)
  arrays = {"xs": xs, "ys": ys, "model_log_density": model.astype(np.float32)}
  log_prob = get_toy_dataset(spec.dataset).log_prob
  if log_prob is not None:
    arrays["data_log_density"] = metrics.density_on_grid(
        lambda x: -log_prob(x), 0.0, lo, hi, DENSITY_RESOLUTION)[2].astype(np.float32)
  np.savez_compressed(os.path.join(run_dir, DENSITY_FILE), **arrays)


@contextlib.contextmanager
def run_log(run_dir: str):
  """`run_dir` created (cleared first if a run there was cut short before any checkpoint), with
  everything printed inside the block appended to its `train.log`."""
  clear_unfinished(run_dir)
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, LOG_FILE), "a", encoding="utf-8") as log, \
       contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    yield


def train_recorded(config, run_dir: str) -> tuple[dict | None, str | None, list[dict]]:
  """`(report, error, records)`: train and evaluate one run in `run_dir`, then read its metrics.

  Whatever training raises is returned as `error` (a failed run is a result, not the end of the
  sweep), except a SIGTERM stop (`train.Preempted`: the run has a checkpoint and is resumed next
  time) and a config the trainer refuses (`train.ConfigError`: every run would fail alike),
  which propagate.
  """
  from bdbounds import train, writers
  report, error = None, None
  try:
    report = train.train_and_evaluate(config, run_dir)
  except (train.Preempted, *config_errors()):
    raise
  except Exception as e:  # noqa: BLE001
    error = f"{type(e).__name__}: {e}"
    traceback.print_exc()
  metrics_path = os.path.join(run_dir, writers.METRICS_FILE)
  records = writers.read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
  return report, error, records


def run_one(spec: RunSpec, workdir: str, num_steps: int, extra: Mapping[str, Any] = ()) -> dict:
  """Train and evaluate one run (`train_recorded`), write its `result.json` and density grid,
  return the result."""
  from bdbounds import writers

  run_dir = spec.run_dir(workdir)
  start = time.perf_counter()
  with run_log(run_dir):
    report, error, records = train_recorded(create_config(spec, num_steps, extra), run_dir)
    reference_nll = data_reference(spec.dataset)[0]
    result = summarize_run(spec, num_steps=num_steps, report=report, records=records, error=error,
                           wall_s=time.perf_counter() - start, reference_nll=reference_nll)
    if not result["diverged"]:
      try:
        _save_density(spec, run_dir, report["log_z"])
      except Exception as e:  # noqa: BLE001 -- the figure misses a panel; the numbers stand
        result["density_error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    result["wall_s"] = time.perf_counter() - start
  writers.write_json(os.path.join(run_dir, RESULT_FILE), result)
  return result


def config_errors() -> tuple:
  from bdbounds import train
  return tuple(filter(None, [getattr(train, "ConfigError", None)]))


def _init_worker(env: Mapping[str, str], cache_dir: str | None, cores: Sequence[int] = (), counter=None) -> None:
  os.environ.update(env)
  if cores:
    # One core per worker. XLA's CPU runtime still runs some work on a second thread, so
    # unpinned workers that fill every core keep taking turns on each other's cores.
    with counter.get_lock():
      index, counter.value = counter.value, counter.value + 1
    with contextlib.suppress(OSError):  # a sandbox that forbids it: the worker runs unpinned
      os.sched_setaffinity(0, {cores[index % len(cores)]})
  if cache_dir:
    # Runs of one pairing compile the same train step (parameters and keys are arguments): a
    # persistent cache, shared by the workers and kept across invocations, compiles it once.
    import jax
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def worker_cores(processes: int) -> list[int]:
  """The cores to pin the workers to, one each in turn: this process's cores when the workers
  fill them all (Linux only), else none (fewer workers use the spare cores' threads)."""
  if not hasattr(os, "sched_getaffinity"):
    return []
  cores = sorted(os.sched_getaffinity(0))
  return cores if processes >= len(cores) > 1 else []


@contextlib.contextmanager
def _environment(env: Mapping[str, str]):
  """`env` in os.environ while worker processes are started (they inherit it), then restored."""
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def worker_environment(base: Mapping[str, str]) -> dict:
  """WORKER_ENV, keeping XLA flags already set (ours come last and win)."""
  env = dict(WORKER_ENV)
  if base.get("XLA_FLAGS"):
    env["XLA_FLAGS"] = f"{base['XLA_FLAGS']} {WORKER_ENV['XLA_FLAGS']}"
  return env


def execute(specs: Sequence[RunSpec], workdir: str, num_steps: int, extra: Mapping[str, Any],
            processes: int, out=sys.stdout, run_fn=run_one, format_fn=None) -> int:
  """Train `specs` on a pool of `processes` spawned workers, each run by `run_fn(spec, workdir,
  num_steps, extra)` (a module-level function, for pickling); print one line per finished run
  (`format_fn(result)`). Returns the number of runs that finished (with a result)."""
  format_fn = format_fn or format_result_line
  if not specs:
    return 0
  env = worker_environment(os.environ)
  context = multiprocessing.get_context("spawn")
  initargs = (env, os.path.join(workdir, CACHE_DIR), worker_cores(processes), context.Value("i", 0))
  start, done = time.perf_counter(), 0
  with _environment(env), concurrent.futures.ProcessPoolExecutor(
      max_workers=processes, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
    futures = {pool.submit(run_fn, spec, workdir, num_steps, extra): spec for spec in specs}
    try:
      for future in concurrent.futures.as_completed(futures):
        spec = futures[future]
        try:
          result = future.result()
        except concurrent.futures.process.BrokenProcessPool:
          print("a worker process died (out of memory?); run the same command again to continue",
                file=out, flush=True)
          break
        except config_errors() as e:
          raise SystemExit(f"{spec.dataset} {spec.pairing}: the trainer refuses the config: {e}")
        except Exception as e:  # noqa: BLE001 -- a stopped run (SIGTERM)
          print(f"{spec.dataset} {spec.pairing} seed{spec.seed}: not finished ({type(e).__name__}: {e}); "
                "run the same command again to continue", file=out, flush=True)
          continue
        done += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (len(specs) - done)
        print(f"[{done}/{len(specs)}] {format_fn(result)}   "
              f"(elapsed {elapsed / 60:.1f} min, about {eta / 60:.1f} min left)", file=out, flush=True)
    except (KeyboardInterrupt, SystemExit):
      for f in futures:
        f.cancel()
      raise
  return done


def format_result_line(r: Mapping, details=None) -> str:
  """A finished run's progress line: data set, pairing, seed and status, then `details(r)`
  (default: the toy measures), or the error of a run that diverged."""
  head = f"{r['dataset']} {r['pairing']} seed{r['seed']}: {r['status']}"
  if r["diverged"]:
    return f"{head} ({(r.get('error') or '')[:120]})"
  return f"{head}  {(details or _toy_details)(r)}"


def _toy_details(r: Mapping) -> str:
  kl = f"KL {r['kl_data_model']:.3f}  " if r.get("kl_data_model") is not None else ""
  ms = f"{1e3 * r['seconds_per_step']:.2f} ms/step  " if r.get("seconds_per_step") else ""
  return f"{kl}NLL {r['nll']:.3f}  {ms}{r['wall_s']:.0f} s"


# ---------------------------------------------------------------------------------------------
# Tables (pure)


def _order(results: Iterable[Mapping]) -> tuple[list[str], list[tuple[str, str]]]:
  """Data sets and pairings present, in the order of TOY_DATASETS and PAIRINGS."""
  datasets = {r["dataset"] for r in results}
  pairs = {(r["lower"], r["upper"]) for r in results}
  rank = lambda seq: lambda x: (seq.index(x) if x in seq else len(seq), x)
  return sorted(datasets, key=rank(TOY_DATASETS)), sorted(pairs, key=rank(PAIRINGS))


def mean_std(values: Iterable) -> tuple[float | None, float | None, int]:
  """Mean and sample standard deviation (ddof 1; None for one value) of the finite values."""
  v = np.asarray([x for x in values if is_finite(x)], np.float64)
  if len(v) == 0:
    return None, None, 0
  return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None), len(v)


def grouped_runs(results: Sequence[Mapping]) -> Iterator[tuple[str, str, str, list[Mapping]]]:
  """`(data set, lower, upper, runs)` for every cell of the grid that has runs, in table order."""
  datasets, pairs = _order(results)
  groups = collections.defaultdict(list)
  for r in results:
    groups[(r["dataset"], r["lower"], r["upper"])].append(r)
  for dataset in datasets:
    for lower, upper in pairs:
      if (dataset, lower, upper) in groups:
        yield dataset, lower, upper, groups[(dataset, lower, upper)]


def median_ms_per_step(runs: Iterable[Mapping]) -> float | None:
  """Median over runs of each run's median step time, in ms."""
  times = [r["seconds_per_step"] for r in runs if is_finite(r.get("seconds_per_step"))]
  return 1e3 * float(np.median(times)) if times else None


def aggregate(results: Sequence[Mapping]) -> list[dict]:
  """One row per data set × pairing: counts, mean ± std over seeds of KL, NLL and the sandwich
  gap (runs that did not diverge), and the median ms per step."""
  rows = []
  for dataset, lower, upper, runs in grouped_runs(results):
    kept = [r for r in runs if not r["diverged"]]
    row = {"dataset": dataset, "lower": lower, "upper": upper, "runs": len(runs),
           "converged": sum(bool(r["converged"]) for r in runs),
           "diverged": sum(bool(r["diverged"]) for r in runs),
           "collapsed": sum(bool(r["collapsed"]) for r in runs)}
    for name in ("kl_data_model", "nll", "sandwich_gap"):
      row[f"{name}_mean"], row[f"{name}_std"], _ = mean_std(r.get(name) for r in kept)
    row["ms_per_step"] = median_ms_per_step(runs)
    rows.append(row)
  return rows


def stability(results: Sequence[Mapping]) -> dict:
  """`{data set: {upper: (converged, runs)}}` over every lower bound and seed."""
  datasets, _ = _order(results)
  table = {d: {} for d in datasets}
  for r in results:
    c, n = table[r["dataset"]].get(r["upper"], (0, 0))
    table[r["dataset"]][r["upper"]] = (c + bool(r["converged"]), n + 1)
  return table


def format_mean_std(mean, std, digits=3) -> str:
  if mean is None:
    return "—"
  return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_markdown(results: Sequence[Mapping]) -> str:
  """The sweep's report: per data set × pairing, the stability table, and the runs that raised."""
  results = list(results)
  if not results:
    return "# Toy sweep\n\nNo finished runs yet.\n"
  datasets, pairs = _order(results)
  steps = sorted({r["num_steps"] for r in results})
  seeds = sorted({r["seed"] for r in results})
  count = collections.Counter(r["status"] for r in results)
  lines = [
      "# Toy sweep: every bound pairing on 2-D data",
      "",
      f"{len(results)} runs ({count['converged']} converged, {count['collapsed']} collapsed, "
      f"{count['diverged']} diverged): {len(datasets)} data set(s) × {len(pairs)} pairing(s) × seeds "
      f"{', '.join(map(str, seeds))}, {' / '.join(map(str, steps))} steps each.",
      "",
      "KL = KL(p_data ‖ p_θ) and NLL = test NLL, exact by quadrature, nats; gap = NLL − its lower bound "
      "E_data[E] − E_q[E] + H_lb(q). Mean ± sample std over the seeds that did not diverge. "
      "**Collapsed**: the test NLL is no better than the moment-matched Gaussian's (equivalently KL is at "
      "least that Gaussian's KL, shown per data set). **Converged**: neither diverged nor collapsed. "
      "ms/step: median over runs of each run's median step time (compilation left out).",
  ]
  rows = aggregate(results)
  for dataset in datasets:
    runs = [r for r in results if r["dataset"] == dataset]
    entropy, _, _ = mean_std(r.get("test_entropy") for r in runs)
    reference = runs[0]["reference_nll"]
    header = f"collapse threshold: NLL ≥ {reference:.3f}"
    if entropy is not None:
      header += f" (KL ≥ {reference - entropy:.3f}; data entropy {entropy:.3f})"
    lines += ["", f"## {dataset}", "", header + ".", "",
              "| lower | upper | KL | NLL | sandwich gap | converged | ms/step |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for row in (r for r in rows if r["dataset"] == dataset):
      flags = []
      if row["diverged"]:
        flags.append(f"{row['diverged']} diverged")
      if row["collapsed"]:
        flags.append(f"{row['collapsed']} collapsed")
      converged = f"{row['converged']}/{row['runs']}" + (f" ({', '.join(flags)})" if flags else "")
      ms = f"{row['ms_per_step']:.2f}" if row["ms_per_step"] is not None else "—"
      stats = [format_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in ("kl_data_model", "nll", "sandwich_gap")]
      lines.append("| " + " | ".join([row["lower"], row["upper"], *stats, converged, ms]) + " |")

  table = stability(results)
  uppers = [u for u in UPPER_BOUNDS if any(u in t for t in table.values())]
  lines += ["", "## Stability: converged fraction", "",
            "Converged runs over all runs, every lower bound and seed pooled; `none` trains with the "
            "lower bound only.", "",
            "| data set | " + " | ".join(uppers) + " |", "|---|" + "---:|" * len(uppers)]
  totals = {u: [0, 0] for u in uppers}
  for dataset in datasets:
    cells = []
    for u in uppers:
      c, n = table[dataset].get(u, (0, 0))
      totals[u][0] += c
      totals[u][1] += n
      cells.append(f"{c}/{n}" if n else "—")
    lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
  lines.append("| **all** | " + " | ".join(
      f"**{c}/{n} ({100 * c / n:.0f} %)**" if n else "—" for c, n in totals.values()) + " |")

  lines += diverged_runs_markdown(results, key=lambda r: (datasets.index(r["dataset"]),
                                                          pairs.index((r["lower"], r["upper"])), r["seed"]))
  return "\n".join(lines) + "\n"


def diverged_runs_markdown(results: Sequence[Mapping], key) -> list[str]:
  """Lines of a "Diverged runs" section (none if no run diverged), rows sorted by `key`."""
  failed = sorted((r for r in results if r["diverged"]), key=key)
  if not failed:
    return []
  lines = ["", "## Diverged runs", "", "| data set | pairing | seed | last logged step | reason |",
           "|---|---|---:|---:|---|"]
  for r in failed:
    reason = " ".join((r.get("error") or "").split())[:200].replace("|", "\\|")
    lines.append(f"| {r['dataset']} | {r['pairing']} | {r['seed']} | {r['last_step']} | {reason} |")
  return lines


def results_csv(results: Sequence[Mapping], columns: Sequence[str] = CSV_COLUMNS) -> str:
  """One row per run, in table order; missing values empty."""
  datasets, pairs = _order(results)
  key = lambda r: (datasets.index(r["dataset"]), pairs.index((r["lower"], r["upper"])), r["seed"])
  return csv_text(sorted(results, key=key), columns)


# ---------------------------------------------------------------------------------------------
# Figures


_DPI = 80


def new_figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _relative(log_density: np.ndarray) -> np.ndarray:
  """exp(log p − max log p): the density at temperature 1 up to a constant; non-finite -> 0."""
  lp = np.where(np.isfinite(log_density), log_density, -np.inf)
  top = np.max(lp)
  return np.exp(lp - top) if np.isfinite(top) else np.zeros_like(lp)


def plot_densities(results: Sequence[Mapping], workdir: str, path: str) -> None:
  """Rows data sets; columns the data density and each pairing's learned density (lowest seed)."""
  datasets, pairs = _order(results)
  first = {}
  for r in sorted(results, key=lambda r: r["seed"]):
    first.setdefault((r["dataset"], r["lower"], r["upper"]), r)
  size = 1.15
  fig = new_figure(size * (len(pairs) + 1) + 0.3, size * len(datasets) + 0.9)
  axes = fig.subplots(len(datasets), len(pairs) + 1, squeeze=False)
  for i, dataset in enumerate(datasets):
    data_drawn = False
    for j, (lower, upper) in enumerate(pairs, start=1):
      ax = axes[i, j]
      r = first.get((dataset, lower, upper))
      grid = _load_density(RunSpec(dataset, lower, upper, r["seed"]).run_dir(workdir)) if r else None
      if grid is not None:
        extent = (grid["xs"][0], grid["xs"][-1], grid["ys"][0], grid["ys"][-1])
        ax.imshow(_relative(grid["model_log_density"]), origin="lower", extent=extent, cmap="viridis",
                  vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        if not data_drawn and "data_log_density" in grid:
          axes[i, 0].imshow(_relative(grid["data_log_density"]), origin="lower", extent=extent, cmap="viridis",
                            vmin=0, vmax=1, interpolation="nearest", aspect="equal")
          data_drawn = True
        label = f"KL {r['kl_data_model']:.2f}" if r.get("kl_data_model") is not None else f"NLL {r['nll']:.2f}"
        if r["collapsed"]:
          label += " collapsed"
        ax.text(0.03, 0.03, label, transform=ax.transAxes, fontsize=6, color="white")
      else:
        ax.set_facecolor("0.85")
        text = r["status"] if r else "no run"
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7)
      if i == 0:
        ax.set_title(f"{lower}\n+ {upper}", fontsize=7)
    if not data_drawn:
      axes[i, 0].set_facecolor("0.85")
      axes[i, 0].text(0.5, 0.5, "no density", transform=axes[i, 0].transAxes, ha="center", va="center",
                      fontsize=7)
    axes[i, 0].set_ylabel(dataset, fontsize=8)
    if i == 0:
      axes[i, 0].set_title("data", fontsize=7)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("Learned density at temperature 1, exp(−E)/Z (lowest seed)", fontsize=9)
  fig.savefig(path, dpi=_DPI)


def _load_density(run_dir: str):
  path = os.path.join(run_dir, DENSITY_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def mean_curves(results: Sequence[Mapping]) -> dict:
  """`{(data set, lower, upper): (steps, mean gap)}` over the seeds whose curves reached the
  longest one's last step (a diverged run's curve stops early)."""
  groups = collections.defaultdict(list)
  for r in results:
    c = r.get("energy_gap_curve") or {}
    if c.get("step"):
      groups[(r["dataset"], r["lower"], r["upper"])].append((tuple(c["step"]), c["energy_gap"]))
  curves = {}
  for key, runs in groups.items():
    steps = max((s for s, _ in runs), key=lambda s: (s[-1], len(s)))
    gaps = np.asarray([g for s, g in runs if s == steps], np.float64)
    curves[key] = (np.asarray(steps), gaps.mean(axis=0))
  return curves


def plot_energy_gap(results: Sequence[Mapping], path: str) -> None:
  """One panel per data set; colour = upper bound, line style = lower bound."""
  datasets, pairs = _order(results)
  curves = mean_curves(results)
  ncols = min(3, len(datasets))
  nrows = -(-len(datasets) // ncols)
  fig = new_figure(max(4.0 * ncols, 10.0), 2.8 * nrows + 1.3)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  colours = {u: f"C{i}" for i, u in enumerate(UPPER_BOUNDS)}
  styles = {lower: s for lower, s in zip(LOWER_BOUNDS, ("-", "--", ":"))}
  for ax, dataset in zip(axes.flat, datasets):
    values = []
    for lower, upper in pairs:
      if (dataset, lower, upper) in curves:
        steps, gap = curves[(dataset, lower, upper)]
        ax.plot(steps, gap, color=colours.get(upper, "k"), linestyle=styles.get(lower, "-."), linewidth=1,
                label=f"{lower} + {upper}")
        values.append(gap[np.isfinite(gap)])
    values = np.concatenate(values) if values else np.zeros(0)
    if values.size:  # a few wild values should not flatten every other curve
      lo, hi = np.quantile(values, [0.01, 0.99])
      pad = 0.1 * (hi - lo) + 1e-6
      ax.set_ylim(lo - pad, hi + pad)
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    ax.set_title(dataset, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("E_data[E] − E_q[E]", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(datasets):]:
    ax.set_axis_off()
  legend = {}
  for ax in axes.flat:  # every pairing once, even where the first panel misses one
    for handle, label in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  order = [f"{lower} + {upper}" for lower, upper in pairs if f"{lower} + {upper}" in legend]
  handles, labels = [legend[k] for k in order], order
  if handles:
    # One column per lower bound (the handles come lower-major, and columns fill first).
    fig.legend(handles, labels, loc="outside lower center", ncols=len({lab.split(" + ")[0] for lab in labels}),
               fontsize=7)
  fig.suptitle("Energy gap over training (mean over seeds that finished)", fontsize=9)
  fig.savefig(path, dpi=_DPI)


# ---------------------------------------------------------------------------------------------
# The sweep


def load_results(workdir: str) -> list[dict]:
  """Every `result.json` under `workdir`."""
  results = []
  for root, _, files in os.walk(workdir):
    if RESULT_FILE in files:
      with open(os.path.join(root, RESULT_FILE), encoding="utf-8") as f:
        results.append(json.load(f))
  return results


def write_reports(workdir: str, results: Sequence[Mapping]) -> list[str]:
  """results.csv, results.md, densities.png and energy_gap.png; returns their paths."""
  paths = [os.path.join(workdir, n) for n in ("results.csv", "results.md", "densities.png", "energy_gap.png")]
  with open(paths[0], "w", encoding="utf-8", newline="") as f:
    f.write(results_csv(results))
  with open(paths[1], "w", encoding="utf-8") as f:
    f.write(results_markdown(results))
  if results:
    plot_densities(results, workdir, paths[2])
    plot_energy_gap(results, paths[3])
  return [p for p in paths if os.path.exists(p)]


def _has_results(workdir: str) -> bool:
  return any(RESULT_FILE in files for _, _, files in os.walk(workdir))


def check_sweep_settings(workdir: str, settings: Mapping) -> None:
  """Record the sweep's step budget and overrides, or refuse a workdir whose results used others:
  tables would mix runs that cannot be compared."""
  path = os.path.join(workdir, SWEEP_FILE)
  settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    if old != settings and _has_results(workdir):
      raise SystemExit(f"{workdir} holds a sweep with other settings ({old}, now {settings}). "
                       f"Use another --workdir, or the same --num_steps and --set.")
    if old == settings:
      return
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2)


def add_run_flags(parser: argparse.ArgumentParser, set_example: str) -> None:
  """The flags every sweep has: seeds, step budget, processes and config overrides."""
  parser.add_argument("--seeds", type=int, help=f"seeds 0..N−1 per data set and pairing (default {DEFAULT_SEEDS})")
  parser.add_argument("--num_steps", type=int, help="train steps per run (default: the config's)")
  parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="parallel worker processes")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help=f"config override for every run, repeatable (e.g. --set {set_example})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bdbounds.experiments.toy_sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="sweep directory (runs, tables, figures)")
  parser.add_argument("--quick", action="store_true",
                      help=f"{len(QUICK_DATASETS)} data sets ({', '.join(QUICK_DATASETS)}), every pairing, "
                           f"{QUICK_SEEDS} seeds, {QUICK_STEPS} steps")
  parser.add_argument("--datasets", help=f"comma-separated, from {', '.join(TOY_DATASETS)} (default: all)")
  parser.add_argument("--pairs", help="comma-separated lower:upper pairs (default: all 15)")
  add_run_flags(parser, "bounds.upper_weight=0.1")
  args = parser.parse_args(argv)
  if args.quick:  # defaults only: a flag given explicitly wins
    args.datasets = ",".join(QUICK_DATASETS) if args.datasets is None else args.datasets
    args.seeds = QUICK_SEEDS if args.seeds is None else args.seeds
    args.num_steps = QUICK_STEPS if args.num_steps is None else args.num_steps
  try:
    args.datasets = [d.strip() for d in (args.datasets or ",".join(TOY_DATASETS)).split(",") if d.strip()]
    unknown = [d for d in args.datasets if d not in TOY_DATASETS]
    if unknown:
      raise ValueError(f"--datasets: unknown {unknown}; choose from {', '.join(TOY_DATASETS)}")
  except ValueError as e:
    parser.error(str(e))
  finish_run_flags(parser, args, PAIRINGS, lambda: config_module("toy").get_config())
  return args


def finish_run_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, default_pairs, get_config) -> None:
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
    args.num_steps = int(get_config().training.num_steps)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  specs = create_runs(args.datasets, args.pairs, args.seeds)
  for dataset in args.datasets:  # a bad --set fails here, before any worker starts
    try:
      create_config(RunSpec(dataset, *args.pairs[0], 0), args.num_steps, args.overrides)
    except (ValueError, TypeError, KeyError) as e:
      raise SystemExit(f"--set: {e}") from e
  check_sweep_settings(args.workdir, {"num_steps": args.num_steps, "overrides": args.overrides})
  return run_sweep(specs, args, write_reports)


def run_sweep(specs: Sequence[RunSpec], args: argparse.Namespace, write_reports_fn, **execute_kwargs) -> list[dict]:
  """Train the runs of `specs` that have no result yet (`execute`), then rebuild the reports from
  every result in `args.workdir`; returns the results."""
  pending = [s for s in specs if not os.path.exists(os.path.join(s.run_dir(args.workdir), RESULT_FILE))]
  processes = min(args.processes, max(1, len(pending)))
  plan = f"{len(pending)} to train ({args.num_steps} steps each, {processes} processes)" if pending else "0 to train"
  print(f"{len(specs)} runs selected, {len(specs) - len(pending)} already done, {plan}", flush=True)
  execute(pending, args.workdir, args.num_steps, args.overrides, processes, **execute_kwargs)
  results = load_results(args.workdir)
  for path in write_reports_fn(args.workdir, results):
    print(f"wrote {path}")
  return results


if __name__ == "__main__":
  main()
