"""Bound pairings on an image data set, over several seeds: samples, likelihood and cost.

    python -m bdbounds.experiments.image_sweep --workdir=runs/digits_sweep            # digits, the config's budget
    python -m bdbounds.experiments.image_sweep --workdir=runs/digits_quick --quick    # 2 000 steps, 1 seed
    python -m bdbounds.experiments.image_sweep --workdir=runs/digits_sweep \\
        --pairs=jacobian:none,mutual_info:latent_fisher --seeds=3 --set=training.batch_size=128
    python -m bdbounds.experiments.image_sweep --workdir=runs/cifar10 --config=cifar10 \\
        --processes=1 --set=eval.inception_weights=/path/to/fid_inception.npz   # on an accelerator

The image counterpart of `toy_sweep`, on the same engine (`sweep`: worker processes, resuming,
`--set`, the run layout `<workdir>/<data set>/<lower>+<upper>/seed<k>`). By default the 10
pairings of lower ∈ {jacobian, mutual_info} × every upper bound, 3 seeds, at the config's step
budget. `jacobian_exact` forms the dense Jacobian, one forward pass per latent dimension: name it
in `--pairs` to include it. `--quick` is the 10 pairings, one seed, 2 000 steps.

`--config` is `digits`, `mnist`, `cifar10` or `celeba` (the file `configs/<name>.py`) or a path to
one of them, with an optional `:preset`. Each run is `train.train_and_evaluate` on it with the
seed, the bounds and the step budget set, evaluation at the last step only, checkpoints as the
config says (a killed sweep resumes inside its runs), a training-metric record every
num_steps/50 steps and no progress bar; then `--set key=value` overrides.

Measures per run (`result.json`, one row of `results.csv`), from the final evaluation:
  fid, inception_score, precision, recall, prd_f8, prd_f1_8
                   of the EMA generator's samples against the training images, in the config's
                   feature network (digits: a classifier trained at evaluation time, so the
                   numbers compare runs of this sweep, not published Inception FIDs)
  bits_per_dim     diffusion pairings only: the diffusion bound on the test set
  nll_lower_bound  E_data[E] − E_q[E] + H_lb(q) on a test batch (unnormalised: the energy's
                   log Z is unknown on images, so it ranks nothing across runs)
  nll_upper_bound, upper_bound_status   the evaluation's upper bound on the same scale, and what
                   it is: conditional (on an LSI constant, or the diffusion model's marginals) or an
                   estimate (docs/bounds.md §1.5)
  diverged         training stopped on a non-finite loss or gradient, raised anything else
                   (`error`), or a measure of the final evaluation is not finite
  seconds_per_step, wall_s, energy_gap_curve   as in `toy_sweep`

Outputs in the workdir (rebuilt from every `result.json` under it after each invocation):
  results.csv   one row per run
  results.md    per pairing: mean ± std over seeds of every measure, finished runs, ms per step
  samples.png   per pairing, 16 samples of the lowest seed's EMA generator (`samples.npy` in
                each run directory)
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from bdbounds import config_files
from bdbounds.experiments.sweep import figures, grid, runner, tables
from bdbounds.experiments.sweep.grid import RunSpec
from bdbounds.objectives import UPPER_BOUNDS

IMAGE_CONFIGS = ("digits", "mnist", "cifar10", "celeba")
PAIRINGS = tuple((lower, upper) for lower in ("jacobian", "mutual_info") for upper in UPPER_BOUNDS)
QUICK_SEEDS = 1
QUICK_STEPS = 2000
GRID_SAMPLES = 16   # samples per pairing in samples.png
SAMPLES_FILE = "samples.npy"

MEASURES = ("fid", "inception_score", "precision", "recall", "prd_f8", "prd_f1_8", "bits_per_dim",
            "nll_lower_bound", "nll_upper_bound")
CSV_COLUMNS = ("dataset", "lower", "upper", "seed", "num_steps", "status", "diverged", *MEASURES, "upper_bound_status",
               "last_step", "seconds_per_step", "wall_s", "error")
# Markdown columns: measure, header, digits.
COLUMNS = (("fid", "FID", 1), ("inception_score", "IS", 2), ("precision", "precision", 2),
           ("recall", "recall", 2), ("prd_f8", "PRD F8", 2), ("prd_f1_8", "PRD F1/8", 2),
           ("bits_per_dim", "bits/dim", 2), ("nll_lower_bound", "NLL lower", 1), ("nll_upper_bound", "NLL upper", 1))


class ImageConfig(NamedTuple):
  name: str     # the data set's config name, also the runs' data-set directory
  path: str     # the config file
  preset: str   # its argument ("" for none)

  @property
  def config_file(self) -> str:
    return f"{self.path}:{self.preset}" if self.preset else self.path


def parse_config_name(text: str) -> ImageConfig:
  """`"digits"`, `"digits:smoke"` or `"configs/digits.py:smoke"`; a bare name is `configs/<name>.py`."""
  path, preset = config_files.split_config_arg(text)
  name = os.path.splitext(os.path.basename(path))[0]
  if name not in IMAGE_CONFIGS:
    raise ValueError(f"--config {text!r}: choose an image config, one of {', '.join(IMAGE_CONFIGS)} "
                     f"(2-D data have their own sweep: python -m bdbounds.experiments.toy_sweep)")
  return ImageConfig(name, path if path.endswith(".py") else os.path.join("configs", f"{name}.py"), preset)


def create_config(spec: RunSpec, num_steps: int, extra: Mapping[str, Any] = (), preset: str = "", *,
                  config_file: str | None = None):
  """The image config (`config_file`, default `configs/<spec.dataset>.py:<preset>`) with the run's
  overrides, locked; checkpoints keep the config's cadence."""
  config = config_files.load_config_file(config_file or parse_config_name(f"{spec.dataset}:{preset}").config_file)
  overrides = grid.run_overrides(spec, num_steps, extra, checkpoint_every=config.checkpoint.every_steps)
  return config_files.apply_overrides(config, overrides)


def summarize_run(spec: RunSpec, *, num_steps: int, report: Mapping | None, records, error: str | None,
                  wall_s: float) -> dict:
  """The measures of one run from its final evaluation report (None if training raised), its
  training records and the error it raised."""
  report = dict(report or {})
  bad = [k for k in MEASURES if k in report and not tables.is_finite(report[k])]
  diverged = error is not None or not report or bool(bad)
  if error is None and diverged:
    error = "non-finite final evaluation: " + ", ".join(f"{k}={report.get(k)}" for k in bad)
  result = runner.run_measures(spec, num_steps=num_steps, records=records, error=error, wall_s=wall_s)
  result.update(status="diverged" if diverged else "finished", diverged=diverged)
  result.update({k: report[k] if tables.is_finite(report.get(k)) else None for k in MEASURES})
  result["upper_bound_status"] = report.get("upper_bound_status")
  return result


def save_samples(config, run: runner.TrainedRun, run_dir: str) -> None:
  """`samples.npy`: GRID_SAMPLES samples of the trained generator (its moving average if kept)."""
  import jax
  from bdbounds import evaluators, experiment
  sample = evaluators.make_shared(experiment.create_experiment(config)).sample
  samples, _ = sample(evaluators.sampling_params(run.state), jax.random.PRNGKey(0), GRID_SAMPLES)
  np.save(os.path.join(run_dir, SAMPLES_FILE), np.asarray(samples, np.float32))


def run_one(spec: RunSpec, workdir: str, num_steps: int, extra: Mapping[str, Any] = (), *,
            preset: str = "", config_file: str | None = None) -> dict:
  """Train and evaluate one run, save samples of its generator, write and return its result."""
  config = create_config(spec, num_steps, extra, preset, config_file=config_file)

  def summarize(run: runner.TrainedRun, wall_s: float) -> dict:
    return summarize_run(spec, num_steps=num_steps, report=run.report, records=run.records, error=run.error,
                         wall_s=wall_s)

  return runner.record_run(spec, workdir, config, summarize, functools.partial(save_samples, config))


def format_result_line(r: Mapping) -> str:
  def details(r):
    fid = f"FID {r['fid']:.1f}  IS {r['inception_score']:.2f}  " if r.get("fid") is not None else ""
    bpd = f"{r['bits_per_dim']:.3f} bits/dim  " if r.get("bits_per_dim") is not None else ""
    ms = f"{1e3 * r['seconds_per_step']:.1f} ms/step  " if r.get("seconds_per_step") else ""
    return f"{fid}{bpd}{ms}{r['wall_s']:.0f} s"
  return runner.format_result_line(r, details)


# ---------------------------------------------------------------------------------------------
# Tables and the figure


def aggregate(results: Sequence[Mapping]) -> list[dict]:
  """One row per data set × pairing: runs, finished, diverged, mean ± std over the finished seeds
  of every measure, and the median ms per step."""
  return tables.aggregate(results, MEASURES)


def results_markdown(results: Sequence[Mapping]) -> str:
  """Per data set, one row per pairing (mean ± std over seeds); then the runs that diverged."""
  results = list(results)
  if not results:
    return "# Image sweep\n\nNo finished runs yet.\n"
  steps = sorted({r["num_steps"] for r in results})
  seeds = sorted({r["seed"] for r in results})
  diverged = [r for r in results if r["diverged"]]
  lines = ["# Image sweep: bound pairings on images", "",
           f"{len(results)} runs ({len(diverged)} diverged), seeds {', '.join(map(str, seeds))}, "
           f"{' / '.join(map(str, steps))} steps each. Mean ± sample std over the seeds that finished. "
           "FID, IS, precision/recall and PRD of the EMA generator's samples in the config's feature "
           "network; bits/dim from the diffusion bound (diffusion pairings only). ms/step: median over "
           "runs of each run's median step time (compilation left out)."]
  rows = aggregate(results)
  for dataset in tables.order(results)[0]:
    statuses = lambda row: ", ".join(sorted({r["upper_bound_status"] for r in results if r.get("upper_bound_status")
                                             and (r["dataset"], r["lower"], r["upper"]) == (dataset, row["lower"],
                                                                                           row["upper"])})) or "—"
    cells = [[f"{row['lower']} + {row['upper']}",
              *(tables.format_mean_std(row[f"{k}_mean"], row[f"{k}_std"], digits) for k, _, digits in COLUMNS),
              statuses(row), f"{row['finished']}/{row['runs']}", tables.format_number(row["ms_per_step"], 1)]
             for row in rows if row["dataset"] == dataset]
    lines += ["", f"## {dataset}", "",
              *tables.markdown_table(["lower + upper", *(c[1] for c in COLUMNS), "upper bound", "finished",
                                      "ms/step"], cells, "l" + "r" * len(COLUMNS) + "lrr")]
  lines += tables.diverged_runs_markdown(results)
  return "\n".join(lines) + "\n"


def results_csv(results: Sequence[Mapping]) -> str:
  return tables.results_csv(results, CSV_COLUMNS)


def plot_samples(results: Sequence[Mapping], workdir: str, path: str) -> bool:
  """One panel per data set × pairing: the saved samples of its lowest finished seed, titled with
  that run's FID. Returns False (and draws nothing) when no run saved samples."""
  from bdbounds import plotting
  panels = []
  for dataset, lower, upper, runs in tables.grouped_runs(results):
    for r in sorted((r for r in runs if not r["diverged"]), key=lambda r: r["seed"]):
      file = os.path.join(RunSpec(dataset, lower, upper, r["seed"]).run_dir(workdir), SAMPLES_FILE)
      if os.path.exists(file):
        image = plotting.image_grid(np.load(file), ncols=int(math.sqrt(GRID_SAMPLES)), value_range=(-1.0, 1.0))
        fid = f"FID {r['fid']:.1f}, " if r.get("fid") is not None else ""
        panels.append((f"{dataset} {lower}+{upper}\n{fid}seed {r['seed']}", image))
        break
  if panels:
    figures.plot_image_panels(panels, path)
  return bool(panels)


def write_reports(workdir: str, results: Sequence[Mapping]) -> list[str]:
  """results.csv, results.md and samples.png; returns the paths written."""
  png = os.path.join(workdir, "samples.png")
  return [runner.write_text(os.path.join(workdir, "results.csv"), results_csv(results)),
          runner.write_text(os.path.join(workdir, "results.md"), results_markdown(results)),
          *([png] if results and plot_samples(results, workdir, png) else [])]


# ---------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bdbounds.experiments.image_sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="sweep directory (runs, tables, figure)")
  parser.add_argument("--config", default="digits",
                      help=f"image config, one of {', '.join(IMAGE_CONFIGS)} or a path to one, with an optional "
                           "':preset' (default digits)")
  parser.add_argument("--quick", action="store_true",
                      help=f"the default pairings, {QUICK_SEEDS} seed, {QUICK_STEPS} steps")
  parser.add_argument("--pairs", help=f"comma-separated lower:upper pairs (default: the {len(PAIRINGS)} "
                                      "pairings of jacobian and mutual_info)")
  grid.add_run_flags(parser, "training.batch_size=128")
  args = parser.parse_args(argv)
  if args.quick:  # defaults only: a flag given explicitly wins
    args.seeds = QUICK_SEEDS if args.seeds is None else args.seeds
    args.num_steps = QUICK_STEPS if args.num_steps is None else args.num_steps
  try:
    args.image_config = parse_config_name(args.config)
  except ValueError as e:
    parser.error(str(e))
  args.name, args.preset = args.image_config.name, args.image_config.preset
  grid.finish_run_flags(parser, args, PAIRINGS, lambda: config_files.load_config_file(args.image_config.config_file))
  return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  config_file = args.image_config.config_file
  specs = grid.create_runs([args.name], args.pairs, args.seeds)
  try:  # a bad --set fails here, before any worker starts
    config = create_config(specs[0], args.num_steps, args.overrides, config_file=config_file)
  except config_files.ConfigFileError as e:
    raise SystemExit(f"--config: {e}") from e
  except (ValueError, TypeError, KeyError) as e:
    raise SystemExit(f"--set: {e}") from e
  from bdbounds import experiment
  try:  # and so does a data set that is not on this machine, with what to do about it
    experiment.create_experiment(config)
  except FileNotFoundError as e:
    raise SystemExit(str(e)) from e
  runner.check_sweep_settings(args.workdir, {"config": args.config, "num_steps": args.num_steps,
                                             "overrides": args.overrides})
  return runner.run_sweep(specs, args, write_reports, run_fn=functools.partial(run_one, config_file=config_file),
                          format_fn=format_result_line)


if __name__ == "__main__":
  main(sys.argv[1:])
