"""Bound pairings on an image data set, over several seeds: samples, likelihood and cost.

    python -m bdbounds.experiments.image_sweep --workdir=runs/digits_sweep            # digits, 8 000 steps
    python -m bdbounds.experiments.image_sweep --workdir=runs/digits_quick --quick    # 2 000 steps, 1 seed
    python -m bdbounds.experiments.image_sweep --workdir=runs/digits_sweep \\
        --pairs=jacobian:none,mutual_info:latent_fisher --seeds=3 --set=training.batch_size=128
    python -m bdbounds.experiments.image_sweep --workdir=runs/cifar10 --config=cifar10 \\
        --processes=1 --set=eval.inception_weights=/path/to/fid_inception.npz   # on an accelerator

The image counterpart of `toy_sweep`, with its machinery (worker processes, resuming, `--set`,
the run layout `<workdir>/<data set>/<lower>+<upper>/seed<k>`). By default the 10 pairings of
lower ∈ {jacobian, mutual_info} × every upper bound, 3 seeds, at the config's step budget
(`configs/digits.py`: 8 000 steps). `jacobian_exact` forms the dense Jacobian, one forward pass
per latent dimension: name it in `--pairs` to include it. `--quick` is the 10 pairings, one
seed, 2 000 steps.

Each run is `train.train_and_evaluate` on `configs/<config>.py[:<preset>]` with the seed, the
bounds and the step budget set, evaluation at the last step only, checkpoints as the config
says (a killed sweep resumes inside its runs), a training-metric record every num_steps/50 steps
and no progress bar; then `--set key=value` overrides.

Measures per run (`result.json`, one row of `results.csv`), from the final evaluation:
  fid, inception_score, precision, recall, prd_f8, prd_f1_8
                   of the EMA generator's samples against the training images, in the config's
                   feature network (digits: a classifier trained at evaluation time, so the
                   numbers compare runs of this sweep, not published Inception FIDs)
  bits_per_dim     diffusion pairings only: the diffusion bound on the test set
  nll_lower_bound  E_data[E] − E_q[E] + H_lb(q) on a test batch (unnormalised: the energy's
                   log Z is unknown on images, so it ranks nothing across runs)
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
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bdbounds.experiments import toy_sweep as sweep
from bdbounds.objectives import UPPER_BOUNDS

IMAGE_CONFIGS = ("digits", "mnist", "cifar10", "celeba")
PAIRINGS = tuple((lower, upper) for lower in ("jacobian", "mutual_info") for upper in UPPER_BOUNDS)
QUICK_SEEDS = 1
QUICK_STEPS = 2000
GRID_SAMPLES = 16   # samples per pairing in samples.png
SAMPLES_FILE = "samples.npy"

MEASURES = ("fid", "inception_score", "precision", "recall", "prd_f8", "prd_f1_8", "bits_per_dim",
            "nll_lower_bound")
CSV_COLUMNS = ("dataset", "lower", "upper", "seed", "num_steps", "status", "diverged", *MEASURES,
               "last_step", "seconds_per_step", "wall_s", "error")


def parse_config_name(text: str) -> tuple[str, str]:
  """`"digits"`, `"digits:smoke"` or `"configs/digits.py:smoke"` -> `("digits", "smoke")`."""
  path, _, preset = text.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if name not in IMAGE_CONFIGS:
    raise ValueError(f"--config {text!r}: choose an image config, one of {', '.join(IMAGE_CONFIGS)} "
                     f"(2-D data have their own sweep: python -m bdbounds.experiments.toy_sweep)")
  return name, preset


def create_config(spec: sweep.RunSpec, num_steps: int, extra: Mapping[str, Any] = (), preset: str = ""):
  """`configs/<spec.dataset>.py:<preset>` with the run's overrides, locked."""
  config = sweep.config_module(spec.dataset).get_config(preset)
  overrides = sweep.run_overrides(spec, num_steps, extra, checkpoint_every=config.checkpoint.every_steps)
  return sweep.apply_overrides(config, overrides)


def summarize_run(spec: sweep.RunSpec, *, num_steps: int, report: Mapping | None, records: Iterable[Mapping],
                  error: str | None, wall_s: float) -> dict:
  """The measures of one run from its final evaluation report (None if training raised), its
  training records and the error it raised."""
  records = sweep.train_records(records)
  report = dict(report or {})
  bad = [k for k in MEASURES if k in report and not sweep.is_finite(report[k])]
  diverged = error is not None or not report or bool(bad)
  if error is None and diverged:
    error = "non-finite final evaluation: " + ", ".join(f"{k}={report.get(k)}" for k in bad)
  result = {
      "dataset": spec.dataset, "lower": spec.lower, "upper": spec.upper, "pairing": spec.pairing,
      "seed": spec.seed, "num_steps": num_steps, "status": "diverged" if diverged else "finished",
      "diverged": diverged, "last_step": int(records[-1]["step"]) if records else 0,
      "seconds_per_step": sweep.median_seconds_per_step(records), "wall_s": float(wall_s), "error": error,
      "energy_gap_curve": sweep.energy_gap_curve(records),
  }
  result.update({k: report[k] if sweep.is_finite(report.get(k)) else None for k in MEASURES})
  return result


def run_one(spec: sweep.RunSpec, workdir: str, num_steps: int, extra: Mapping[str, Any] = (), *,
            preset: str = "") -> dict:
  """Train and evaluate one run, save samples of its generator, write and return its result."""
  from bdbounds import evaluate, writers

  run_dir = spec.run_dir(workdir)
  start = time.perf_counter()
  with sweep.run_log(run_dir):
    report, error, records = sweep.train_recorded(create_config(spec, num_steps, extra, preset), run_dir)
    result = summarize_run(spec, num_steps=num_steps, report=report, records=records, error=error,
                           wall_s=time.perf_counter() - start)
    if not result["diverged"]:
      import jax
      samples = evaluate.load_generator(run_dir)(jax.random.PRNGKey(0), GRID_SAMPLES)
      np.save(os.path.join(run_dir, SAMPLES_FILE), np.asarray(samples, np.float32))
  writers.write_json(os.path.join(run_dir, sweep.RESULT_FILE), result)
  return result


def format_result_line(r: Mapping) -> str:
  return sweep.format_result_line(r, details=_image_details)


def _image_details(r: Mapping) -> str:
  fid = f"FID {r['fid']:.1f}  IS {r['inception_score']:.2f}  " if r.get("fid") is not None else ""
  bpd = f"{r['bits_per_dim']:.3f} bits/dim  " if r.get("bits_per_dim") is not None else ""
  ms = f"{1e3 * r['seconds_per_step']:.1f} ms/step  " if r.get("seconds_per_step") else ""
  return f"{fid}{bpd}{ms}{r['wall_s']:.0f} s"


# ---------------------------------------------------------------------------------------------
# Tables and the figure (pure, but for reading the saved samples)


def aggregate(results: Sequence[Mapping]) -> list[dict]:
  """One row per data set × pairing: runs, diverged, mean ± std over the finished seeds of every
  measure, and the median ms per step."""
  rows = []
  for dataset, lower, upper, runs in sweep.grouped_runs(results):
    kept = [r for r in runs if not r["diverged"]]
    row = {"dataset": dataset, "lower": lower, "upper": upper, "runs": len(runs), "finished": len(kept)}
    for name in MEASURES:
      row[f"{name}_mean"], row[f"{name}_std"], _ = sweep.mean_std(r.get(name) for r in kept)
    row["ms_per_step"] = sweep.median_ms_per_step(runs)
    rows.append(row)
  return rows


_COLUMNS = (("fid", "FID", 1), ("inception_score", "IS", 2), ("precision", "precision", 2),
            ("recall", "recall", 2), ("prd_f8", "PRD F8", 2), ("prd_f1_8", "PRD F1/8", 2),
            ("bits_per_dim", "bits/dim", 2))


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
  for dataset in sorted({r["dataset"] for r in results}):
    lines += ["", f"## {dataset}", "",
              "| lower + upper | " + " | ".join(c[1] for c in _COLUMNS) + " | finished | ms/step |",
              "|---|" + "---:|" * (len(_COLUMNS) + 2)]
    for row in (r for r in aggregate(results) if r["dataset"] == dataset):
      cells = [sweep.format_mean_std(row[f"{k}_mean"], row[f"{k}_std"], digits) for k, _, digits in _COLUMNS]
      ms = f"{row['ms_per_step']:.1f}" if row["ms_per_step"] is not None else "—"
      lines.append(f"| {row['lower']} + {row['upper']} | " + " | ".join(cells)
                   + f" | {row['finished']}/{row['runs']} | {ms} |")
  lines += sweep.diverged_runs_markdown(results, key=lambda r: (r["dataset"], r["pairing"], r["seed"]))
  return "\n".join(lines) + "\n"


def results_csv(results: Sequence[Mapping]) -> str:
  return sweep.results_csv(results, CSV_COLUMNS)


def plot_samples(results: Sequence[Mapping], workdir: str, path: str) -> bool:
  """One panel per data set × pairing: the saved samples of its lowest finished seed, titled with
  that run's FID. Returns False (and draws nothing) when no run saved samples."""
  from bdbounds import plotting
  panels = []
  for dataset, lower, upper, runs in sweep.grouped_runs(results):
    for r in sorted((r for r in runs if not r["diverged"]), key=lambda r: r["seed"]):
      file = os.path.join(sweep.RunSpec(dataset, lower, upper, r["seed"]).run_dir(workdir), SAMPLES_FILE)
      if os.path.exists(file):
        grid = plotting.image_grid(np.load(file), ncols=int(math.sqrt(GRID_SAMPLES)), value_range=(-1.0, 1.0))
        fid = f"FID {r['fid']:.1f}, " if r.get("fid") is not None else ""
        panels.append((f"{dataset} {lower}+{upper}\n{fid}seed {r['seed']}", grid))
        break
  if not panels:
    return False
  ncols = min(5, len(panels))
  nrows = -(-len(panels) // ncols)
  fig = sweep.new_figure(2.4 * ncols, 2.7 * nrows)
  for i, (title, grid) in enumerate(panels):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
  fig.savefig(path)
  return True


def write_reports(workdir: str, results: Sequence[Mapping]) -> list[str]:
  """results.csv, results.md and samples.png; returns the paths written."""
  csv_path, md_path, png_path = (os.path.join(workdir, n) for n in ("results.csv", "results.md", "samples.png"))
  with open(csv_path, "w", encoding="utf-8", newline="") as f:
    f.write(results_csv(results))
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(results_markdown(results))
  return [csv_path, md_path] + ([png_path] if results and plot_samples(results, workdir, png_path) else [])


# ---------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bdbounds.experiments.image_sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="sweep directory (runs, tables, figure)")
  parser.add_argument("--config", default="digits",
                      help=f"image config, one of {', '.join(IMAGE_CONFIGS)}, with an optional ':preset' (default digits)")
  parser.add_argument("--quick", action="store_true",
                      help=f"the default pairings, {QUICK_SEEDS} seed, {QUICK_STEPS} steps")
  parser.add_argument("--pairs", help=f"comma-separated lower:upper pairs (default: the {len(PAIRINGS)} "
                                      "pairings of jacobian and mutual_info)")
  sweep.add_run_flags(parser, "training.batch_size=128")
  args = parser.parse_args(argv)
  if args.quick:  # defaults only: a flag given explicitly wins
    args.seeds = QUICK_SEEDS if args.seeds is None else args.seeds
    args.num_steps = QUICK_STEPS if args.num_steps is None else args.num_steps
  try:
    args.name, args.preset = parse_config_name(args.config)
  except ValueError as e:
    parser.error(str(e))
  sweep.finish_run_flags(parser, args, PAIRINGS, lambda: sweep.config_module(args.name).get_config(args.preset))
  return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  specs = sweep.create_runs([args.name], args.pairs, args.seeds)
  try:  # a bad --set fails here, before any worker starts
    config = create_config(specs[0], args.num_steps, args.overrides, args.preset)
  except (ValueError, TypeError, KeyError) as e:
    raise SystemExit(f"--set: {e}") from e
  from bdbounds import train
  try:  # and so does a data set that is not on this machine, with what to do about it
    train.build_experiment(config)
  except FileNotFoundError as e:
    raise SystemExit(str(e)) from e
  sweep.check_sweep_settings(args.workdir, {"config": args.config, "num_steps": args.num_steps,
                                            "overrides": args.overrides})
  return sweep.run_sweep(specs, args, write_reports, run_fn=functools.partial(run_one, preset=args.preset),
                         format_fn=format_result_line)


if __name__ == "__main__":
  main(sys.argv[1:])
