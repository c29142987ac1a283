"""Every bound pairing on every 2-D data set, over several seeds: quality, stability and cost.

    python -m bdbounds.experiments.toy_sweep --workdir=runs/sweep                  # the full sweep
    python -m bdbounds.experiments.toy_sweep --workdir=runs/quick --quick          # a first look
    python -m bdbounds.experiments.toy_sweep --workdir=runs/sweep --datasets=rings,moons \\
        --pairs=jacobian:none,jacobian:r1 --seeds=2 --num_steps=5000 --set=bounds.upper_weight=0.1

The full sweep is lower ∈ {jacobian, jacobian_exact, mutual_info} × upper ∈ {none, latent_fisher,
score_matching, r1, diffusion} (15 pairings) on the 9 data sets of `configs/toy.py`, 3 seeds each
(405 runs) at the config's step budget.

`--quick` runs the same 15 pairings on 4 data sets (8gaussians, 25gaussians, rings, moons) with
2 seeds (0 and 1) and 2 000 steps each: 120 runs, otherwise configured exactly as the full sweep.
Any flag given explicitly replaces the quick choice (`--quick --seeds=1`). docs/results.md has
what it measured and how long it took.

Each run is the real trainer, `train.train_and_evaluate`, on `<--config>:<data set>` (default
`configs/toy.py`; the data set is appended to the file's presets, so `--config=configs/toy.py:smoke`
sweeps the smoke preset) with the overrides of `sweep.grid.run_overrides`, then `--set
key=value`, which may change anything but the seed, the data set, the bounds and the step budget,
which have their own flags. The run directory `<workdir>/<data set>/<lower>+<upper>/seed<k>`
holds the usual trainer outputs plus `result.json` (the measures below), `train.log` (what the
trainer printed) and `density.npz`: the learned log-density at temperature 1 (exp(−E)/Z, Z by the
quadrature of the evaluation) and the data's, on a 128² grid over the data's box.

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
  nll_upper_bound, upper_bound_status      the report's upper bound (2-D: the certified χ² bound)
  game_nll_upper_bound, game_upper_bound_status, game_upper_bound_held
                       the pairing's own upper bound, its status, and whether exact NLL ≤ it
  lsi_constant_trained, lsi_constant_implied, latent_lsi_constant_implied, lsi_constant_lower
                       log-Sobolev pairings: the constant λ stands for, the constant C* = 2·KL/FI
                       this q needed (where q's density is exact), and the Poincaré floor under any
                       valid constant of p_θ (docs/bounds.md §4.9)
  kl_generator_model, fold_fraction        exact KL(q ‖ p_θ) and the fraction of latents where G folds

Collapse. A run has collapsed when its test NLL is at least ½ log det(2πe Σ), the NLL of the
moment-matched Gaussian N(μ_data, Σ_data) (μ, Σ from 100 000 data samples). Since
NLL = H(p_data) + KL(p_data ‖ p_θ), this says KL(p_data ‖ p_θ) ≥ KL(p_data ‖ N(μ, Σ)), and the
moment-matched Gaussian is the best of all Gaussians in that KL: the model has learned nothing
about the data beyond its first two moments. It needs no data density (pinwheel and 2spirals have
none), costs one covariance, and adapts to each data set, unlike a fixed number of nats: the
Gaussian's KL is large on data with sharp modes (25gaussians) and small on smooth ones (rings,
moons); results.md shows it per data set. The failures it is meant to catch land above it: an
energy gone flat leaves the model's Gaussian base term (std 5), far broader than the data; a
density that keeps k of K equal modes pays at least log(K/k) nats, and far more unless it leaves
mass on the others. Runs just above it are often merely too smooth; `kl_data_model` and
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
  sweep.json      the sweep's step budget, overrides (and config, if not the default); a later
                  invocation with others is refused
  compilation_cache/  XLA's persistent cache, shared by the workers

Resuming: a run whose `result.json` exists is skipped, so the same command continues a killed
sweep. Parallelism: `--processes` worker processes (default: the CPU count), one XLA and BLAS
thread and one run at a time each, pinned one to a core when they fill the cores. `sweep.runner`
says more.
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from bdbounds import config_files
from bdbounds.data import TOY_DATASETS
from bdbounds.experiments.sweep import figures, grid, runner, tables
from bdbounds.experiments.sweep.grid import RunSpec
from bdbounds.objectives import UPPER_BOUNDS

DEFAULT_CONFIG = "configs/toy.py"
QUICK_DATASETS = ("8gaussians", "25gaussians", "rings", "moons")
QUICK_SEEDS = 2
QUICK_STEPS = 2000

DENSITY_RESOLUTION = 128    # cells per side of the stored density grid
REFERENCE_SAMPLES = 100_000  # data samples for the collapse reference and the plotting box
DENSITY_FILE = "density.npz"

MEASURES = ("kl_data_model", "nll", "sandwich_gap")
UPPER_MEASURES = ("nll_upper_bound", "game_nll_upper_bound", "lsi_constant_trained", "lsi_constant_implied",
                  "latent_lsi_constant_implied", "lsi_constant_lower", "kl_generator_model", "fold_fraction")
UPPER_FLAGS = ("upper_bound_status", "game_upper_bound_status", "game_upper_bound_held")
CSV_COLUMNS = ("dataset", "lower", "upper", "seed", "num_steps", "status", "converged", "diverged", "collapsed",
               "kl_data_model", "nll", "sandwich_gap", "nll_lower_bound", "test_entropy", "reference_nll",
               *UPPER_MEASURES, *UPPER_FLAGS, "quadrature_converged", "last_step", "seconds_per_step", "wall_s",
               "error")


def create_config(spec: RunSpec, num_steps: int, extra: Mapping[str, Any] = (), config_file: str = DEFAULT_CONFIG):
  """`<config_file>:<data set>` with the run's overrides, locked."""
  config = config_files.load_config_file(config_files.with_presets(config_file, spec.dataset))
  return config_files.apply_overrides(config, grid.run_overrides(spec, num_steps, extra))


# ---------------------------------------------------------------------------------------------
# Measures of one run


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


def summarize_run(spec: RunSpec, *, num_steps: int, report: Mapping | None, records, error: str | None,
                  wall_s: float, reference_nll: float) -> dict:
  """The measures of one run from its evaluation report (None if training raised), its
  training records (`metrics.jsonl`), the error it raised, and the collapse reference."""
  report = dict(report or {})
  nll, kl = report.get("nll"), report.get("kl_data_model")
  diverged = (error is not None or not report or not tables.is_finite(nll)
              or ("kl_data_model" in report and not tables.is_finite(kl)))
  if error is None and report and diverged:
    error = "non-finite final evaluation: " + ", ".join(
        f"{k}={report.get(k)}" for k in ("nll", "kl_data_model") if k in report)
  collapsed = False if diverged else is_collapsed(nll, reference_nll)
  result = runner.run_measures(spec, num_steps=num_steps, records=records, error=error, wall_s=wall_s)
  result.update({"status": "diverged" if diverged else "collapsed" if collapsed else "converged",
                 "converged": not diverged and not collapsed, "diverged": diverged, "collapsed": collapsed})
  for k in (*MEASURES, *UPPER_MEASURES, "nll_lower_bound", "test_entropy"):
    result[k] = report.get(k) if tables.is_finite(report.get(k)) else None
  result.update({k: report.get(k) for k in UPPER_FLAGS})
  result.update(reference_nll=reference_nll, quadrature_converged=report.get("quadrature_converged"))
  return result


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


def save_density(spec: RunSpec, config, run: runner.TrainedRun, run_dir: str) -> None:
  """`density.npz`: the trained energy's log-density at temperature 1 (log Z from the run's report)
  and the data's, on the data's box."""
  import jax
  from bdbounds import evaluators, experiment, metrics
  exp = experiment.create_experiment(config)
  energy = jax.tree_util.Partial(evaluators.make_shared(exp).energies, run.state.energy.params)
  _, lo, hi = data_reference(spec.dataset)
  xs, ys, model = metrics.density_on_grid(energy, run.report["log_z"], lo, hi, DENSITY_RESOLUTION)
  arrays = {"xs": xs, "ys": ys, "model_log_density": model.astype(np.float32)}
  log_prob = exp.dataset.log_prob
  if log_prob is not None:
    arrays["data_log_density"] = metrics.density_on_grid(
        jax.tree_util.Partial(lambda x: -log_prob(x)), 0.0, lo, hi, DENSITY_RESOLUTION)[2].astype(np.float32)
  np.savez_compressed(os.path.join(run_dir, DENSITY_FILE), **arrays)


def run_one(spec: RunSpec, workdir: str, num_steps: int, extra: Mapping[str, Any] = (), *,
            config_file: str = DEFAULT_CONFIG) -> dict:
  """Train and evaluate one run, write its `result.json` and density grid, return the result."""
  config = create_config(spec, num_steps, extra, config_file)

  def summarize(run: runner.TrainedRun, wall_s: float) -> dict:
    return summarize_run(spec, num_steps=num_steps, report=run.report, records=run.records, error=run.error,
                         wall_s=wall_s, reference_nll=data_reference(spec.dataset)[0])

  return runner.record_run(spec, workdir, config, summarize, functools.partial(save_density, spec, config))


def format_result_line(r: Mapping) -> str:
  def details(r):
    kl = f"KL {r['kl_data_model']:.3f}  " if r.get("kl_data_model") is not None else ""
    ms = f"{1e3 * r['seconds_per_step']:.2f} ms/step  " if r.get("seconds_per_step") else ""
    return f"{kl}NLL {r['nll']:.3f}  {ms}{r['wall_s']:.0f} s"
  return runner.format_result_line(r, details)


# ---------------------------------------------------------------------------------------------
# Tables and figures


def aggregate(results: Sequence[Mapping]) -> list[dict]:
  """One row per data set × pairing: counts, mean ± std over seeds of KL, NLL and the sandwich
  gap (runs that did not diverge), and the median ms per step."""
  return tables.aggregate(results, MEASURES, flags=("converged", "diverged", "collapsed"))


def stability(results: Sequence[Mapping]) -> dict:
  """`{data set: {upper: (converged, runs)}}` over every lower bound and seed."""
  table = {d: {} for d in tables.order(results)[0]}
  for r in results:
    c, n = table[r["dataset"]].get(r["upper"], (0, 0))
    table[r["dataset"]][r["upper"]] = (c + bool(r["converged"]), n + 1)
  return table


def _stability_markdown(results: Sequence[Mapping]) -> list[str]:
  table = stability(results)
  uppers = [u for u in UPPER_BOUNDS if any(u in t for t in table.values())]
  totals = {u: [0, 0] for u in uppers}
  rows = []
  for dataset, cells in table.items():
    for u in uppers:
      c, n = cells.get(u, (0, 0))
      totals[u][0] += c
      totals[u][1] += n
    rows.append([dataset, *(f"{c}/{n}" if n else "—" for c, n in (cells.get(u, (0, 0)) for u in uppers))])
  rows.append(["**all**", *(f"**{c}/{n} ({100 * c / n:.0f} %)**" if n else "—" for c, n in totals.values())])
  return ["", "## Stability: converged fraction", "",
          "Converged runs over all runs, every lower bound and seed pooled; `none` trains with the "
          "lower bound only.", "", *tables.markdown_table(["data set", *uppers], rows, "l" + "r" * len(uppers))]


def upper_bound_summary(results: Sequence[Mapping]) -> dict:
  """`{upper: row}` over the runs that did not diverge: how often the game's upper bound held
  (exact NLL ≤ it), its statuses, how often the certified bound held, and the medians of the
  log-Sobolev constants (trained, implied C*, Poincaré floor)."""
  summary = {}
  for upper in UPPER_BOUNDS:
    runs = [r for r in results if r["upper"] == upper and not r["diverged"] and r.get("game_upper_bound_held")
            is not None]
    if not runs:
      continue
    median = lambda k: (float(np.median(v)) if (v := [r[k] for r in runs if tables.is_finite(r.get(k))]) else None)
    certified = [r for r in runs if r.get("upper_bound_status") == "certified"]
    summary[upper] = {
        "runs": len(runs), "held": sum(bool(r["game_upper_bound_held"]) for r in runs),
        "statuses": ", ".join(sorted({r["game_upper_bound_status"] for r in runs})),
        "certified_held": sum(r["nll"] <= r["nll_upper_bound"] for r in certified), "certified_runs": len(certified),
        **{k: median(k) for k in ("lsi_constant_trained", "lsi_constant_implied", "latent_lsi_constant_implied",
                                  "lsi_constant_lower")}}
  return summary


def _upper_bounds_markdown(results: Sequence[Mapping]) -> list[str]:
  summary = upper_bound_summary(results)
  if not summary:
    return []
  num = lambda x: tables.format_number(x, 3) if x is not None else "—"
  rows = [[upper, row["statuses"], f"{row['held']}/{row['runs']}", f"{row['certified_held']}/{row['certified_runs']}",
           num(row["lsi_constant_trained"]), num(row["lsi_constant_implied"]),
           num(row["latent_lsi_constant_implied"]), num(row["lsi_constant_lower"])] for upper, row in summary.items()]
  return ["", "## Upper bounds: how often they held", "",
          "Runs that did not diverge. **held**: exact NLL ≤ the pairing's own upper bound (`game_nll_upper_bound`); "
          "**certified held**: exact NLL ≤ the χ² bound. Medians over runs of the log-Sobolev constant training's "
          "λ stands for, the constant C* = 2·KL/FI the generator's q needed (ambient; latent for latent_fisher's "
          "reading), and the Poincaré floor under any valid constant of p_θ (docs/bounds.md §4.9).", "",
          *tables.markdown_table(["upper", "status", "held", "certified held", "C trained", "C* ambient",
                                  "C* latent", "C floor"], rows, "llrrrrrr")]


def results_markdown(results: Sequence[Mapping]) -> str:
  """The sweep's report: per data set × pairing, the stability table, and the runs that raised."""
  results = list(results)
  if not results:
    return "# Toy sweep\n\nNo finished runs yet.\n"
  datasets, pairs = tables.order(results)
  count = collections.Counter(r["status"] for r in results)
  lines = [
      "# Toy sweep: every bound pairing on 2-D data",
      "",
      f"{len(results)} runs ({count['converged']} converged, {count['collapsed']} collapsed, "
      f"{count['diverged']} diverged): {len(datasets)} data set(s) × {len(pairs)} pairing(s) × seeds "
      f"{', '.join(map(str, sorted({r['seed'] for r in results})))}, "
      f"{' / '.join(map(str, sorted({r['num_steps'] for r in results})))} steps each.",
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
    entropy = tables.mean_std(r.get("test_entropy") for r in runs).mean
    reference = runs[0]["reference_nll"]
    header = f"collapse threshold: NLL ≥ {reference:.3f}"
    if entropy is not None:
      header += f" (KL ≥ {reference - entropy:.3f}; data entropy {entropy:.3f})"
    cells = []
    for row in (r for r in rows if r["dataset"] == dataset):
      flags = [f"{row[k]} {k}" for k in ("diverged", "collapsed") if row[k]]
      converged = f"{row['converged']}/{row['runs']}" + (f" ({', '.join(flags)})" if flags else "")
      stats = [tables.format_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in MEASURES]
      cells.append([row["lower"], row["upper"], *stats, converged, tables.format_number(row["ms_per_step"], 2)])
    lines += ["", f"## {dataset}", "", header + ".", "",
              *tables.markdown_table(["lower", "upper", "KL", "NLL", "sandwich gap", "converged", "ms/step"], cells,
                                     "llrrrrr")]
  lines += _stability_markdown(results)
  lines += _upper_bounds_markdown(results)
  lines += tables.diverged_runs_markdown(results)
  return "\n".join(lines) + "\n"


def results_csv(results: Sequence[Mapping]) -> str:
  return tables.results_csv(results, CSV_COLUMNS)


def load_density(run_dir: str):
  path = os.path.join(run_dir, DENSITY_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def plot_densities(results: Sequence[Mapping], workdir: str, path: str) -> None:
  """Rows data sets; columns the data density and each pairing's learned density (lowest seed)."""
  load = lambda r: load_density(RunSpec(r["dataset"], r["lower"], r["upper"], r["seed"]).run_dir(workdir))
  figures.plot_density_grid(results, load, path)


def write_reports(workdir: str, results: Sequence[Mapping]) -> list[str]:
  """results.csv, results.md, densities.png and energy_gap.png; returns their paths."""
  paths = [runner.write_text(os.path.join(workdir, "results.csv"), results_csv(results)),
           runner.write_text(os.path.join(workdir, "results.md"), results_markdown(results))]
  if results:
    paths += [os.path.join(workdir, "densities.png"), os.path.join(workdir, "energy_gap.png")]
    plot_densities(results, workdir, paths[2])
    figures.plot_energy_gap(results, paths[3])
  return paths


# ---------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bdbounds.experiments.toy_sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="sweep directory (runs, tables, figures)")
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help=f"2-D config file[:presets]; each run appends its data set (default {DEFAULT_CONFIG})")
  parser.add_argument("--quick", action="store_true",
                      help=f"{len(QUICK_DATASETS)} data sets ({', '.join(QUICK_DATASETS)}), every pairing, "
                           f"{QUICK_SEEDS} seeds, {QUICK_STEPS} steps")
  parser.add_argument("--datasets", help=f"comma-separated, from {', '.join(TOY_DATASETS)} (default: all)")
  parser.add_argument("--pairs", help="comma-separated lower:upper pairs (default: all 15)")
  grid.add_run_flags(parser, "bounds.upper_weight=0.1")
  args = parser.parse_args(argv)
  if args.quick:  # defaults only: a flag given explicitly wins
    args.datasets = ",".join(QUICK_DATASETS) if args.datasets is None else args.datasets
    args.seeds = QUICK_SEEDS if args.seeds is None else args.seeds
    args.num_steps = QUICK_STEPS if args.num_steps is None else args.num_steps
  args.datasets = [d.strip() for d in (args.datasets or ",".join(TOY_DATASETS)).split(",") if d.strip()]
  unknown = [d for d in args.datasets if d not in TOY_DATASETS]
  if unknown:
    parser.error(f"--datasets: unknown {unknown}; choose from {', '.join(TOY_DATASETS)}")
  grid.finish_run_flags(parser, args, grid.PAIRINGS,
                        lambda: config_files.load_config_file(config_files.with_presets(args.config, args.datasets[0])))
  return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  specs = grid.create_runs(args.datasets, args.pairs, args.seeds)
  for dataset in args.datasets:  # a bad --config or --set fails here, before any worker starts
    try:
      create_config(RunSpec(dataset, *args.pairs[0], 0), args.num_steps, args.overrides, args.config)
    except config_files.ConfigFileError as e:
      raise SystemExit(f"--config: {e}") from e
    except (ValueError, TypeError, KeyError) as e:
      raise SystemExit(f"--set: {e}") from e
  settings = {"num_steps": args.num_steps, "overrides": args.overrides}
  if args.config != DEFAULT_CONFIG:  # recorded only when given, so sweeps of the default still resume
    settings["config"] = args.config
  runner.check_sweep_settings(args.workdir, settings)
  return runner.run_sweep(specs, args, write_reports, run_fn=functools.partial(run_one, config_file=args.config),
                          format_fn=format_result_line)


if __name__ == "__main__":
  main()
