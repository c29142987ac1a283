"""The toy sweep: the collapse definition, run measures, tables and figures on synthetic results,
and one tiny sweep through the command line, resumed."""

import concurrent.futures
import contextlib
import csv
import io
import json
import math
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

from bdbounds import experiment
from bdbounds.experiments import toy_sweep
from bdbounds.experiments.sweep import figures, grid, runner, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def in_repository_root(monkeypatch):
  """Config files are named relative to the repository root, as on the command line."""
  monkeypatch.chdir(ROOT)


def fake_result(dataset, lower, upper, seed, *, kl=0.3, entropy=2.8, reference_nll=4.2, error=None,
                num_steps=100, seconds_per_step=0.004):
  """A result as a run would write it: KL and entropy make the NLL, the reference decides collapse."""
  spec = grid.RunSpec(dataset, lower, upper, seed)
  report = None if error else {"nll": entropy + kl, "kl_data_model": kl, "test_entropy": entropy,
                               "nll_lower_bound": entropy + kl - 1.0, "sandwich_gap": 1.0,
                               "quadrature_converged": True, "log_z": 0.0}
  steps = range(10, num_steps + 1, 10) if not error else range(10, num_steps // 2, 10)
  records = [{"step": s, "train/energy_gap": 0.1 * seed - s / num_steps,
              "train/seconds_per_step": 1.0 if s == 10 else seconds_per_step} for s in steps]
  return toy_sweep.summarize_run(spec, num_steps=num_steps, report=report, records=records, error=error,
                                 wall_s=12.0, reference_nll=reference_nll)


def synthetic_results():
  return [
      fake_result("8gaussians", "jacobian", "none", 0, kl=0.2),
      fake_result("8gaussians", "jacobian", "none", 1, kl=0.4),
      fake_result("8gaussians", "jacobian", "r1", 0, error="NonFiniteError: non-finite loss at energy/penalty"),
      fake_result("8gaussians", "jacobian", "r1", 1, kl=1.9),  # NLL 4.7 ≥ 4.2: collapsed
      fake_result("rings", "mutual_info", "diffusion", 0, kl=0.5, entropy=2.6, reference_nll=3.6),
  ]


# ---------------------------------------------------------------------------------------------
# Collapse


def test_collapse_reference_is_the_nll_of_the_moment_matched_gaussian():
  cov = np.array([[2.0, 0.3], [0.3, 0.5]])
  x = np.random.default_rng(0).multivariate_normal([1.0, -2.0], cov, size=200_000)
  mean, fit = x.mean(0), np.cov(x.T, bias=True)  # the maximum-likelihood Gaussian
  d = x - mean
  quadratic = 0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(fit), d)
  nll = np.mean(quadratic) + 0.5 * np.linalg.slogdet(2 * np.pi * fit)[1]
  assert toy_sweep.gaussian_reference_nll(fit) == pytest.approx(nll, abs=1e-6)
  assert toy_sweep.gaussian_reference_nll(np.eye(2)) == pytest.approx(math.log(2 * math.pi * math.e))
  with pytest.raises(ValueError, match="singular"):
    toy_sweep.gaussian_reference_nll(np.zeros((2, 2)))


def test_collapsed_means_no_better_than_the_gaussian_and_excludes_diverged():
  assert toy_sweep.is_collapsed(4.2, 4.2) and toy_sweep.is_collapsed(5.0, 4.2)
  assert not toy_sweep.is_collapsed(4.19, 4.2)
  good = fake_result("moons", "jacobian", "r1", 0, kl=0.3)
  collapsed = fake_result("moons", "jacobian", "r1", 0, kl=1.5)  # NLL 4.3 ≥ 4.2
  assert (good["status"], good["converged"], good["collapsed"]) == ("converged", True, False)
  assert (collapsed["status"], collapsed["converged"], collapsed["collapsed"]) == ("collapsed", False, True)
  diverged = fake_result("moons", "jacobian", "r1", 0, error="NonFiniteError: nan")
  assert (diverged["status"], diverged["diverged"], diverged["collapsed"]) == ("diverged", True, False)


# ---------------------------------------------------------------------------------------------
# Measures of one run


def test_summarize_run_reads_the_records_and_flags_non_finite_evaluations():
  spec = grid.RunSpec("rings", "jacobian", "latent_fisher", 2)
  records = [{"step": 5, "train/energy_gap": 0.5, "train/seconds_per_step": 2.0},  # compilation
             {"step": 10, "train/energy_gap": 0.1, "train/seconds_per_step": 0.003},
             {"step": 10, "train/energy_gap": 0.2, "train/seconds_per_step": 0.005},  # a resumed duplicate
             {"step": 15, "train/energy_gap": -0.1, "train/seconds_per_step": 0.004},
             {"step": 15, "eval/nll": 3.0}]  # evaluation scalars share the step
  report = {"nll": 3.0, "kl_data_model": 0.4, "sandwich_gap": 0.7, "nll_lower_bound": 2.3,
            "test_entropy": 2.6, "quadrature_converged": True}
  r = toy_sweep.summarize_run(spec, num_steps=15, report=report, records=records, error=None, wall_s=3.0,
                              reference_nll=3.6)
  assert r["energy_gap_curve"] == {"step": [5, 10, 15], "energy_gap": [0.5, 0.2, -0.1]}
  assert r["seconds_per_step"] == pytest.approx(0.0045)  # the first record (compilation) left out
  assert (r["status"], r["last_step"], r["nll"], r["sandwich_gap"]) == ("converged", 15, 3.0, 0.7)
  json.dumps(r, allow_nan=False)  # strict JSON: no NaN sneaks into result.json

  nan = toy_sweep.summarize_run(spec, num_steps=15, report={**report, "kl_data_model": float("nan")},
                                records=records, error=None, wall_s=3.0, reference_nll=3.6)
  assert nan["diverged"] and nan["kl_data_model"] is None and "kl_data_model=nan" in nan["error"]


def test_run_overrides_and_config():
  spec = grid.RunSpec("moons", "mutual_info", "r1", 1)
  o = grid.run_overrides(spec, 2000, {"log.every_steps": 7})
  assert o["log.every_steps"] == 7 and o["eval.every_steps"] == o["checkpoint.every_steps"] == 2000
  assert grid.run_overrides(spec, 2000)["log.every_steps"] == 2000 // grid.CURVE_POINTS
  config = toy_sweep.create_config(spec, 300, {"bounds.upper_weight": 0.5})
  assert (config.seed, config.data.name) == (1, "moons")
  assert (config.bounds.lower, config.bounds.upper) == ("mutual_info", "r1")
  assert config.training.num_steps == 300 and config.bounds.upper_weight == 0.5 and not config.log.progress_bar
  with pytest.raises(ValueError, match="unknown config keys"):
    toy_sweep.create_config(spec, 300, {"training.num_stepz": 3})
  assert spec.run_dir("w") == os.path.join("w", "moons", "mutual_info+r1", "seed1")


def test_command_line_parsing():
  quick = toy_sweep.parse_args(["--workdir=w", "--quick"])
  assert quick.datasets == list(toy_sweep.QUICK_DATASETS) and quick.seeds == toy_sweep.QUICK_SEEDS
  assert quick.num_steps == toy_sweep.QUICK_STEPS and len(quick.pairs) == 15
  args = toy_sweep.parse_args(["--workdir=w", "--quick", "--seeds=1", "--pairs=jacobian:none,mutual_info:diffusion",
                               "--set", "training.batch_size=100", "--set", "bounds.mi_estimator=nwj"])
  assert args.seeds == 1 and args.pairs == [("jacobian", "none"), ("mutual_info", "diffusion")]
  assert args.overrides == {"training.batch_size": 100, "bounds.mi_estimator": "nwj"}
  full = toy_sweep.parse_args(["--workdir=w"])
  assert full.seeds == 3 and len(full.datasets) == 9 and full.num_steps == 30_000
  assert len(grid.create_runs(full.datasets, full.pairs, full.seeds)) == 405
  for bad in (["--pairs=jacobian:gp"], ["--datasets=ringz"], ["--set=seed=3"], ["--set=nokey"], ["--seeds=0"]):
    with pytest.raises(SystemExit):
      toy_sweep.parse_args(["--workdir=w", *bad])


def test_the_config_flag_takes_a_file_and_presets_and_its_errors_stop_the_sweep(tmp_path, monkeypatch):
  smoke = toy_sweep.parse_args(["--workdir=w", "--config=configs/toy.py:smoke", "--datasets=rings"])
  assert smoke.num_steps == 20  # the step budget of the file's preset
  config = toy_sweep.create_config(grid.RunSpec("rings", "jacobian", "r1", 0), 20, config_file=smoke.config)
  assert (config.data.name, config.training.batch_size) == ("rings", 32)  # data set appended to the presets
  with pytest.raises(SystemExit):
    toy_sweep.parse_args(["--workdir=w", "--config=configs/toy.py:ringz"])
  with pytest.raises(SystemExit, match="--config: .*unknown preset 'ringz'"):
    toy_sweep.main([f"--workdir={tmp_path}", "--config=configs/toy.py:ringz", "--num_steps=5"])
  with pytest.raises(SystemExit, match=r"--set: unknown config keys \['training.num_stepz'\]"):
    toy_sweep.main([f"--workdir={tmp_path}", "--num_steps=5", "--set=training.num_stepz=3"])
  assert not os.listdir(tmp_path)  # nothing written before the config is right

  # sweep.json names the config only when it is not the default, so older sweeps still resume.
  monkeypatch.setattr(runner, "run_sweep", lambda specs, args, *a, **k: specs)
  specs = toy_sweep.main([f"--workdir={tmp_path / 'default'}", "--datasets=moons", "--pairs=jacobian:none"])
  assert specs == [grid.RunSpec("moons", "jacobian", "none", s) for s in range(3)]
  assert json.loads((tmp_path / "default" / runner.SWEEP_FILE).read_text()) == {"num_steps": 30_000, "overrides": {}}
  toy_sweep.main([f"--workdir={tmp_path / 'smoke'}", "--config=configs/toy.py:smoke", "--datasets=moons"])
  assert json.loads((tmp_path / "smoke" / runner.SWEEP_FILE).read_text()) == {
      "num_steps": 20, "overrides": {}, "config": "configs/toy.py:smoke"}


def test_one_mean_std_for_every_table():
  assert tables.mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(np.std([1, 2, 4], ddof=1)), 3)
  assert tables.mean_std([2.5]) == (2.5, None, 1)  # one value has no sample std
  assert tables.mean_std([None, 1.0, None, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)  # missing: left out
  assert tables.mean_std([]) == (None, None, 0) and tables.mean_std([None]) == (None, None, 0)
  nan = tables.mean_std([1.0, float("nan")])  # a non-finite value is not hidden
  assert math.isnan(nan.mean) and nan.count == 2
  assert tables.mean_std(np.array([[1.0, 3.0]])).mean == 2.0
  assert tables.format_mean_std(2.0, None) == "2.000" and tables.format_mean_std(None, 1.0) == "—"
  assert tables.format_mean_std(0.5, 0.02, 3, std_format=".3g") == "0.500 ± 0.02"


def test_workers_are_pinned_one_per_core_only_when_they_fill_the_cores(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 0, 2, 1}, raising=False)
  assert runner.worker_cores(4) == [0, 1, 2, 3] == runner.worker_cores(6)
  assert runner.worker_cores(3) == []  # fewer workers than cores: their second threads use the spare
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
  assert runner.worker_cores(2) == []  # one core: nothing to choose


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda pid: ())(0)) < 2, reason="needs 2 cores (Linux)")
def test_pinned_workers_run_on_one_core_each():
  cores = runner.worker_cores(2 * os.cpu_count())
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context, initializer=runner.init_worker,
                                              initargs=({}, None, cores, context.Value("i", 0))) as pool:
    affinities = list(pool.map(os.sched_getaffinity, [0, 0, 0, 0]))
  assert all(len(a) == 1 and a <= set(cores) for a in affinities)


def test_a_run_that_raises_is_recorded_as_diverged_and_a_stopped_one_is_not(tmp_path, monkeypatch):
  from bdbounds import train, writers

  def fails_at_step_7(config, workdir):
    with writers.MetricWriter(workdir) as w:
      for step in (5, 7):
        w.write_scalars(step, {"train/energy_gap": 0.1, "train/seconds_per_step": 0.01})
    raise train.NonFiniteError("non-finite loss or gradient at energy/penalty, step 7")

  monkeypatch.setattr(train, "train_and_evaluate", fails_at_step_7)
  spec = grid.RunSpec("moons", "jacobian", "r1", 0)
  result = toy_sweep.run_one(spec, str(tmp_path), 10)
  assert (result["status"], result["last_step"]) == ("diverged", 7)
  assert result["error"] == "NonFiniteError: non-finite loss or gradient at energy/penalty, step 7"
  on_disk = json.loads(open(os.path.join(spec.run_dir(str(tmp_path)), runner.RESULT_FILE)).read())
  assert on_disk["status"] == "diverged" and on_disk["energy_gap_curve"]["step"] == [5, 7]

  def stopped(config, workdir):
    raise train.Preempted("stopped by SIGTERM")

  monkeypatch.setattr(train, "train_and_evaluate", stopped)
  other = grid.RunSpec("moons", "jacobian", "r1", 1)
  with pytest.raises(train.Preempted):  # resumed from its checkpoint next time, not recorded
    toy_sweep.run_one(other, str(tmp_path), 10)
  assert not os.path.exists(os.path.join(other.run_dir(str(tmp_path)), runner.RESULT_FILE))

  def refuses(config, workdir):  # a config the trainer refuses would fail every run alike: not a result
    raise experiment.ConfigError("model.energy_hidden='100': hidden widths are positive integers")

  monkeypatch.setattr(train, "train_and_evaluate", refuses)
  with pytest.raises(experiment.ConfigError):
    toy_sweep.run_one(other, str(tmp_path), 10)


def test_the_density_grid_is_drawn_from_the_state_training_returns(tmp_path, monkeypatch):
  """No checkpoint is read back: the run directory holds none here, and the grid is exp(−E)/Z of
  the returned state's energy, with log Z from the returned report."""
  import jax
  from bdbounds import evaluators, train, writers

  extra = {"model.energy_hidden": (8,), "model.generator_hidden": (8,)}
  spec = grid.RunSpec("8gaussians", "jacobian", "none", 0)
  config = toy_sweep.create_config(spec, 10, extra)
  exp = experiment.create_experiment(config)
  state = jax.jit(exp.init_state)(exp.keys["init"])
  log_z = 1.25
  entropy, kl = 2.8, 0.3

  def trained(config, workdir):
    with writers.MetricWriter(workdir) as w:
      w.write_scalars(10, {"train/energy_gap": 0.1, "train/seconds_per_step": 0.01})
    return state, {"nll": entropy + kl, "kl_data_model": kl, "test_entropy": entropy, "log_z": log_z,
                   "nll_lower_bound": 2.0, "sandwich_gap": 1.1, "quadrature_converged": True}

  monkeypatch.setattr(train, "train_and_evaluate", trained)
  result = toy_sweep.run_one(spec, str(tmp_path), 10, extra)
  assert result["status"] == "converged" and result["kl_data_model"] == kl and "output_error" not in result
  assert not os.path.exists(os.path.join(spec.run_dir(str(tmp_path)), "checkpoints"))
  density = toy_sweep.load_density(spec.run_dir(str(tmp_path)))
  assert density["model_log_density"].shape == (toy_sweep.DENSITY_RESOLUTION,) * 2
  points = np.array([[density["xs"][3], density["ys"][5]], [density["xs"][100], density["ys"][60]]])
  energies = np.asarray(evaluators.make_shared(exp).energies(state.energy.params, points))
  expected = -energies - log_z
  assert density["model_log_density"][[5, 60], [3, 100]] == pytest.approx(expected, abs=1e-4)
  data = density["data_log_density"][[5, 60], [3, 100]]
  assert data == pytest.approx(np.asarray(exp.dataset.log_prob(points)), abs=1e-4)


def test_sweep_settings_are_fixed_once_a_run_has_a_result(tmp_path):
  workdir = str(tmp_path)
  runner.check_sweep_settings(workdir, {"num_steps": 10, "overrides": {"model.energy_hidden": (0,)}})
  settings = {"num_steps": 20, "overrides": {"model.energy_hidden": (8, 8)}}
  runner.check_sweep_settings(workdir, settings)  # no results yet: a corrected command is welcome
  runner.check_sweep_settings(workdir, settings)
  run_dir = grid.RunSpec("moons", "jacobian", "r1", 0).run_dir(workdir)
  os.makedirs(run_dir)
  open(os.path.join(run_dir, runner.RESULT_FILE), "w").write("{}")
  runner.check_sweep_settings(workdir, settings)
  with pytest.raises(SystemExit, match="other settings"):
    runner.check_sweep_settings(workdir, {**settings, "num_steps": 30})


# ---------------------------------------------------------------------------------------------
# Tables and figures


def test_aggregate_on_synthetic_results():
  rows = {(r["dataset"], r["lower"], r["upper"]): r for r in toy_sweep.aggregate(synthetic_results())}
  assert list(rows) == [("8gaussians", "jacobian", "none"), ("8gaussians", "jacobian", "r1"),
                        ("rings", "mutual_info", "diffusion")]
  none = rows[("8gaussians", "jacobian", "none")]
  assert none["kl_data_model_mean"] == pytest.approx(0.3)
  assert none["kl_data_model_std"] == pytest.approx(0.1 * math.sqrt(2))
  assert (none["runs"], none["converged"], none["ms_per_step"]) == (2, 2, pytest.approx(4.0))
  r1 = rows[("8gaussians", "jacobian", "r1")]
  assert (r1["runs"], r1["converged"], r1["diverged"], r1["collapsed"]) == (2, 0, 1, 1)
  assert r1["kl_data_model_mean"] == pytest.approx(1.9)
  assert r1["kl_data_model_std"] is None  # one value: the diverged seed has no KL
  assert toy_sweep.stability(synthetic_results()) == {
      "8gaussians": {"none": (2, 2), "r1": (0, 2)}, "rings": {"diffusion": (1, 1)}}


def test_markdown_and_csv_on_synthetic_results():
  results = synthetic_results()
  md = toy_sweep.results_markdown(results)
  assert "5 runs (3 converged, 1 collapsed, 1 diverged)" in md
  assert "| jacobian | none | 0.300 ± 0.141 | 3.100 ± 0.141 | 1.000 ± 0.000 | 2/2 | 4.00 |" in md
  assert "| jacobian | r1 | 1.900 | 4.700 | 1.000 | 0/2 (1 diverged, 1 collapsed) | 4.00 |" in md
  assert "collapse threshold: NLL ≥ 4.200 (KL ≥ 1.400; data entropy 2.800)" in md
  assert "| 8gaussians | 2/2 | 0/2 | — |" in md  # stability: none, r1, diffusion
  assert "| **all** | **2/2 (100 %)** | **0/2 (0 %)** | **1/1 (100 %)** |" in md
  assert "| 8gaussians | jacobian+r1 | 0 | 40 | NonFiniteError: non-finite loss at energy/penalty |" in md
  rows = list(csv.DictReader(io.StringIO(toy_sweep.results_csv(results))))
  assert [r["status"] for r in rows] == ["converged", "converged", "diverged", "collapsed", "converged"]
  assert rows[2]["nll"] == "" and rows[2]["error"].startswith("NonFiniteError")
  assert float(rows[0]["kl_data_model"]) == pytest.approx(0.2)
  assert toy_sweep.results_markdown([]).startswith("# Toy sweep")


def test_the_upper_bound_table_counts_where_each_bound_held():
  def with_upper(result, *, game, certified, trained=None, implied=None, floor=None):
    result.update(game_nll_upper_bound=game, game_upper_bound_held=result["nll"] <= game,
                  game_upper_bound_status="conditional", nll_upper_bound=certified, upper_bound_status="certified",
                  lsi_constant_trained=trained, lsi_constant_implied=implied, lsi_constant_lower=floor)
    return result
  results = [with_upper(fake_result("8gaussians", "jacobian", "r1", 0, kl=0.2), game=3.5, certified=3.2,
                        trained=0.01, implied=0.3, floor=1.0),   # NLL 3.0: both held
             with_upper(fake_result("8gaussians", "jacobian", "r1", 1, kl=0.4), game=3.0, certified=3.1,
                        trained=0.01, implied=0.5, floor=1.2),   # NLL 3.2: neither held
             with_upper(fake_result("8gaussians", "jacobian", "none", 0), game=2.0, certified=3.5),
             fake_result("8gaussians", "jacobian", "diffusion", 0, error="NonFiniteError: x")]
  summary = toy_sweep.upper_bound_summary(results)
  assert set(summary) == {"r1", "none"}  # the diverged run has no report
  r1 = summary["r1"]
  assert (r1["held"], r1["runs"], r1["certified_held"], r1["certified_runs"]) == (1, 2, 1, 2)
  assert r1["lsi_constant_implied"] == pytest.approx(0.4) and r1["lsi_constant_lower"] == pytest.approx(1.1)
  assert (summary["none"]["held"], summary["none"]["lsi_constant_trained"]) == (0, None)
  md = toy_sweep.results_markdown(results)
  assert "| r1 | conditional | 1/2 | 1/2 | 0.010 | 0.400 | — | 1.100 |" in md


def test_figures_from_synthetic_results(tmp_path):
  results = synthetic_results()
  # A density grid for one run; the others show as missing or diverged panels.
  run_dir = grid.RunSpec("8gaussians", "jacobian", "none", 0).run_dir(str(tmp_path))
  os.makedirs(run_dir)
  xs = ys = np.linspace(-3, 3, 16)
  logp = -0.5 * (xs[None] ** 2 + ys[:, None] ** 2)
  np.savez(os.path.join(run_dir, toy_sweep.DENSITY_FILE), xs=xs, ys=ys, model_log_density=logp,
           data_log_density=logp)
  toy_sweep.plot_densities(results, str(tmp_path), str(tmp_path / "d.png"))
  figures.plot_energy_gap(results, str(tmp_path / "g.png"))
  assert (tmp_path / "d.png").stat().st_size > 1000 and (tmp_path / "g.png").stat().st_size > 1000
  steps, gap = figures.mean_curves(results)[("8gaussians", "jacobian", "none")]
  assert steps[-1] == 100 and gap[-1] == pytest.approx(0.05 - 1.0)  # mean of seeds 0 and 1
  assert steps.tolist() == figures.mean_curves(results)[("8gaussians", "jacobian", "r1")][0].tolist()


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # a real sweep in a subprocess: 30-40 s, mostly compilation
def test_tiny_sweep_end_to_end_then_resumed(tmp_path):
  workdir = tmp_path / "sweep"
  argv = [f"--workdir={workdir}", "--datasets=8gaussians", "--pairs=jacobian:none,jacobian_exact:none", "--seeds=1",
          "--num_steps=10", "--processes=1", "--set=training.batch_size=32", "--set=eval.num_samples=256",
          "--set=eval.quadrature_tol=0.01", "--set=data.num_test=2000",
          # One narrow hidden layer: less to compile, which is most of this test's time.
          "--set=model.energy_hidden=(16,)", "--set=model.generator_hidden=(16,)"]
  done = subprocess.run([sys.executable, "-m", "bdbounds.experiments.toy_sweep", *argv],
                        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  for name in ("results.csv", "results.md", "densities.png", "energy_gap.png", "sweep.json"):
    assert (workdir / name).exists(), name
  rows = list(csv.DictReader(open(workdir / "results.csv")))
  assert [(r["lower"], r["upper"]) for r in rows] == [("jacobian", "none"), ("jacobian_exact", "none")]
  assert all(r["status"] in ("converged", "collapsed") and math.isfinite(float(r["nll"])) for r in rows)
  result_files = sorted(workdir.glob("8gaussians/*/seed0/result.json"))
  assert len(result_files) == 2
  result = json.loads(result_files[0].read_text())
  assert result["energy_gap_curve"]["step"] == list(range(1, 11)) and result["seconds_per_step"] > 0
  with np.load(result_files[0].parent / toy_sweep.DENSITY_FILE) as f:
    assert f["model_log_density"].shape == (toy_sweep.DENSITY_RESOLUTION,) * 2

  # The same command again trains nothing (no worker starts) and rebuilds the tables.
  mtimes = [p.stat().st_mtime_ns for p in result_files]
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = toy_sweep.main(argv)
  assert "2 runs selected, 2 already done, 0 to train" in out.getvalue()
  assert len(results) == 2 and [p.stat().st_mtime_ns for p in result_files] == mtimes
  # Another step budget in the same workdir is refused.
  with pytest.raises(SystemExit, match="other settings"):
    toy_sweep.main([a if not a.startswith("--num_steps") else "--num_steps=20" for a in argv])
