"""Running a sweep: the recorded training of one run, worker processes, resuming, and the loop.

Each run is the real trainer, `train.train_and_evaluate`, in `<workdir>/<data set>/<lower>+<upper>/seed<k>`,
which then holds the trainer's outputs, what it printed (`train.log`) and the run's measures
(`result.json`). After every invocation the reports are rebuilt from every `result.json` under
the workdir.

Resuming: a run whose `result.json` exists is skipped, so the same command continues a killed
sweep; a run cut short before its first checkpoint starts again from scratch, one with a
checkpoint resumes from it. Delete a run's `result.json` to train it again. `sweep.json` holds the
sweep's step budget and overrides; a later invocation with others is refused.

Parallelism: `--processes` worker processes, started with "spawn", each limited to one XLA and
BLAS thread and training one run at a time, so JAX starts once per worker and per-step times are
comparable between runs. When the workers are at least as many as the cores, each is pinned to
one core on Linux: XLA's CPU runtime keeps a second thread busy besides, and unpinned workers
that fill every core crowd each other. The workers share XLA's persistent compilation cache
(`compilation_cache/` in the workdir): a pairing's train step is compiled once for all its data
sets and seeds, not once per run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from bdbounds.experiments.sweep import tables
from bdbounds.experiments.sweep.grid import RunSpec

RESULT_FILE = "result.json"
SWEEP_FILE = "sweep.json"
LOG_FILE = "train.log"
CACHE_DIR = "compilation_cache"

# One thread per worker: the workers share the cores, and per-step times stay comparable.
WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several workers may share one accelerator
}


# ---------------------------------------------------------------------------------------------
# One run (in a worker process)


def has_checkpoint(run_dir: str) -> bool:
  checkpoints = os.path.join(run_dir, "checkpoints")
  return os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))


def clear_unfinished(run_dir: str) -> None:
  """A run without a result and without a checkpoint was cut short: start it afresh, so its
  metrics file does not hold two attempts. With a checkpoint the trainer resumes from it."""
  if os.path.isdir(run_dir) and not has_checkpoint(run_dir):
    shutil.rmtree(run_dir)


@contextlib.contextmanager
def run_log(run_dir: str):
  """`run_dir` created (cleared first if a run there was cut short before any checkpoint), with
  everything printed inside the block appended to its `train.log`."""
  clear_unfinished(run_dir)
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, LOG_FILE), "a", encoding="utf-8") as log, \
       contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    yield


class TrainedRun(NamedTuple):
  """What training one run left: its final state and evaluation report (None if it raised), the
  error it raised, and its training records (`metrics.jsonl`)."""
  state: Any
  report: dict | None
  error: str | None
  records: list


def train_recorded(config, run_dir: str) -> TrainedRun:
  """Train and evaluate one run in `run_dir`, then read its metrics.

  Whatever training raises is returned as `error` (a failed run is a result, not the end of the
  sweep), except a SIGTERM stop (`train.Preempted`: the run has a checkpoint and is resumed next
  time) and a config the trainer refuses (`ConfigError`: every run would fail alike), which
  propagate.
  """
  from bdbounds import experiment, train, writers
  state, report, error = None, None, None
  try:
    state, report = train.train_and_evaluate(config, run_dir)
  except (train.Preempted, experiment.ConfigError):
    raise
  except Exception as e:  # noqa: BLE001
    error = f"{type(e).__name__}: {e}"
    traceback.print_exc()
  metrics_path = os.path.join(run_dir, writers.METRICS_FILE)
  records = writers.read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
  return TrainedRun(state, report, error, records)


def train_records(records: Iterable[Mapping]) -> list[Mapping]:
  """Training records (evaluation scalars share their step), the last one of each step kept."""
  by_step = {}
  for r in records:
    if "train/energy_gap" in r:
      by_step[int(r["step"])] = r
  return [by_step[s] for s in sorted(by_step)]


def median_seconds_per_step(records: Sequence[Mapping]) -> float | None:
  """Median of the training records' step times, leaving out the first (it includes compilation)."""
  times = [r["train/seconds_per_step"] for r in records[1:] if tables.is_finite(r.get("train/seconds_per_step"))]
  return float(np.median(times)) if times else None


def energy_gap_curve(records: Sequence[Mapping]) -> dict:
  return {"step": [int(r["step"]) for r in records], "energy_gap": [float(r["train/energy_gap"]) for r in records]}


def run_measures(spec: RunSpec, *, num_steps: int, records: Iterable[Mapping], error: str | None,
                 wall_s: float) -> dict:
  """The measures every sweep records of a run, from its training records: its place in the grid,
  the last logged step, the median step time, the energy-gap curve, wall time and error."""
  records = train_records(records)
  return {"dataset": spec.dataset, "lower": spec.lower, "upper": spec.upper, "pairing": spec.pairing,
          "seed": spec.seed, "num_steps": num_steps, "last_step": int(records[-1]["step"]) if records else 0,
          "seconds_per_step": median_seconds_per_step(records), "wall_s": float(wall_s), "error": error,
          "energy_gap_curve": energy_gap_curve(records)}


def record_run(spec: RunSpec, workdir: str, config, summarize: Callable[[TrainedRun, float], dict],
               save_outputs: Callable[[TrainedRun, str], None] | None = None) -> dict:
  """Train `config` in the run's directory (`train_recorded`), measure it (`summarize(run,
  wall_s)`), save what a run that did not diverge adds (`save_outputs(run, run_dir)`), and write
  and return its `result.json`. `wall_s` covers all of it."""
  from bdbounds import writers
  run_dir = spec.run_dir(workdir)
  start = time.perf_counter()
  with run_log(run_dir):
    run = train_recorded(config, run_dir)
    result = summarize(run, time.perf_counter() - start)
    if save_outputs is not None and not result["diverged"]:
      try:
        save_outputs(run, run_dir)
      except Exception as e:  # noqa: BLE001 -- a figure misses a panel; the numbers stand
        result["output_error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    result["wall_s"] = time.perf_counter() - start
  writers.write_json(os.path.join(run_dir, RESULT_FILE), result)
  return result


# ---------------------------------------------------------------------------------------------
# Worker processes


def init_worker(env: Mapping[str, str], cache_dir: str | None, cores: Sequence[int] = (), counter=None) -> None:
  """A worker's start: `env` set, pinned to the next of `cores` (if any), XLA's persistent
  compilation cache in `cache_dir` (if given)."""
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


def worker_environment(base: Mapping[str, str]) -> dict:
  """WORKER_ENV, keeping XLA flags already set (ours come last and win)."""
  env = dict(WORKER_ENV)
  if base.get("XLA_FLAGS"):
    env["XLA_FLAGS"] = f"{base['XLA_FLAGS']} {WORKER_ENV['XLA_FLAGS']}"
  return env


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


def format_result_line(r: Mapping, details: Callable[[Mapping], str]) -> str:
  """A finished run's progress line: data set, pairing, seed and status, then `details(r)`, or
  the error of a run that diverged."""
  head = f"{r['dataset']} {r['pairing']} seed{r['seed']}: {r['status']}"
  if r["diverged"]:
    return f"{head} ({(r.get('error') or '')[:120]})"
  return f"{head}  {details(r)}"


def execute(specs: Sequence[RunSpec], workdir: str, num_steps: int, extra: Mapping[str, Any], processes: int, *,
            run_fn: Callable, format_fn: Callable[[Mapping], str], out=sys.stdout) -> int:
  """Train `specs` on a pool of `processes` spawned workers, each run by `run_fn(spec, workdir,
  num_steps, extra)` (picklable: a module-level function or a partial of one); print one line per
  finished run (`format_fn(result)`). Returns the number of runs that finished (with a result)."""
  from bdbounds import experiment
  if not specs:
    return 0
  env = worker_environment(os.environ)
  context = multiprocessing.get_context("spawn")
  initargs = (env, os.path.join(workdir, CACHE_DIR), worker_cores(processes), context.Value("i", 0))
  start, done = time.perf_counter(), 0
  with _environment(env), concurrent.futures.ProcessPoolExecutor(
      max_workers=processes, mp_context=context, initializer=init_worker, initargs=initargs) as pool:
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
        except experiment.ConfigError as e:
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


def find_runs(workdir: str, datasets: Sequence[str] | None = None, seed: int | None = None):
  """`(runs, skipped)`: `(run directory, result)` of the finished runs under `workdir` that can be
  restored (filtered by data set and seed), in table order, and `(result, reason)` for the others
  (diverged, or without a checkpoint). A result lacking its place in the grid gets it from its path."""
  runs, skipped = [], []
  for root, dirs, files in os.walk(workdir):
    dirs.sort()
    if RESULT_FILE not in files:
      continue
    with open(os.path.join(root, RESULT_FILE), encoding="utf-8") as f:
      result = json.load(f)
    result.setdefault("dataset", os.path.basename(os.path.dirname(os.path.dirname(root))))
    pairing = os.path.basename(os.path.dirname(root))
    result.setdefault("lower", pairing.partition("+")[0])
    result.setdefault("upper", pairing.partition("+")[2])
    if "seed" not in result:
      name = os.path.basename(root)
      result["seed"] = int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else -1
    if (datasets and result["dataset"] not in datasets) or (seed is not None and result["seed"] != seed):
      continue
    if result.get("diverged") or result.get("status") == "diverged":
      skipped.append((result, "diverged: " + str(result.get("error") or "")))
    elif not has_checkpoint(root):
      skipped.append((result, "no checkpoint"))
    else:
      runs.append((root, result))
  runs.sort(key=lambda r: tables.sort_key(r[1]))
  skipped.sort(key=lambda r: tables.sort_key(r[0]))
  return runs, skipped


def _has_results(workdir: str) -> bool:
  return any(RESULT_FILE in files for _, _, files in os.walk(workdir))


def check_sweep_settings(workdir: str, settings: Mapping) -> None:
  """Record the sweep's settings (step budget, overrides) in `sweep.json`, or refuse a workdir
  whose results used others: tables would mix runs that cannot be compared."""
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


def write_text(path: str, text: str) -> str:
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  return path


def run_sweep(specs: Sequence[RunSpec], args: argparse.Namespace, write_reports: Callable,
              **execute_kwargs) -> list[dict]:
  """Train the runs of `specs` that have no result yet (`execute`), then rebuild the reports from
  every result in `args.workdir` (`write_reports(workdir, results)` returns the paths written);
  returns the results."""
  pending = [s for s in specs if not os.path.exists(os.path.join(s.run_dir(args.workdir), RESULT_FILE))]
  processes = min(args.processes, max(1, len(pending)))
  plan = f"{len(pending)} to train ({args.num_steps} steps each, {processes} processes)" if pending else "0 to train"
  print(f"{len(specs)} runs selected, {len(specs) - len(pending)} already done, {plan}", flush=True)
  execute(pending, args.workdir, args.num_steps, args.overrides, processes, **execute_kwargs)
  results = load_results(args.workdir)
  for path in write_reports(args.workdir, results):
    print(f"wrote {path}")
  return results
