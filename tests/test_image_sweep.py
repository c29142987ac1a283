"""The image sweep: config names, run measures and tables on synthetic results, and one tiny
sweep on the digits smoke preset through the command line."""

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bdbounds.experiments import image_sweep
from bdbounds.experiments.sweep import grid, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def in_repository_root(monkeypatch):
  """Config files are named relative to the repository root, as on the command line."""
  monkeypatch.chdir(ROOT)

RECORDS = [{"step": 5, "train/energy_gap": 0.5, "train/seconds_per_step": 2.0},  # compilation
           {"step": 10, "train/energy_gap": 0.1, "train/seconds_per_step": 0.03},
           {"step": 15, "train/energy_gap": -0.1, "train/seconds_per_step": 0.05},
           {"step": 15, "eval/fid": 40.0}]  # evaluation scalars share the step


def fake_result(lower, upper, seed, *, fid=40.0, error=None, bits_per_dim=None):
  spec = grid.RunSpec("digits", lower, upper, seed)
  report = None if error else {"fid": fid, "inception_score": 6.0 + seed, "precision": 0.3, "recall": 0.6,
                               "prd_f8": 0.9, "prd_f1_8": 0.8, "nll_lower_bound": -3.0, "energy_data": -1.0,
                               "nll_upper_bound": 2.0, "upper_bound_status": "estimate" if upper == "none"
                               else "conditional"}
  if report and bits_per_dim is not None:
    report["bits_per_dim"] = bits_per_dim
  return image_sweep.summarize_run(spec, num_steps=15, report=report, records=RECORDS, error=error, wall_s=9.0)


def test_config_names_take_a_path_or_a_name_and_a_preset_and_refuse_2d_data():
  assert image_sweep.parse_config_name("digits") == ("digits", os.path.join("configs", "digits.py"), "")
  assert image_sweep.parse_config_name("mnist:smoke").config_file == os.path.join("configs", "mnist.py") + ":smoke"
  cifar = image_sweep.parse_config_name("configs/cifar10.py:smoke")
  assert cifar == ("cifar10", "configs/cifar10.py", "smoke") and cifar.config_file == "configs/cifar10.py:smoke"
  assert image_sweep.parse_config_name(f"{ROOT}/configs/celeba.py").path == f"{ROOT}/configs/celeba.py"
  with pytest.raises(ValueError, match="toy_sweep"):
    image_sweep.parse_config_name("configs/toy.py")
  with pytest.raises(SystemExit):
    image_sweep.parse_args(["--workdir=w", "--config=toy"])
  quick = image_sweep.parse_args(["--workdir=w", "--quick"])
  assert (quick.seeds, quick.num_steps, len(quick.pairs)) == (1, image_sweep.QUICK_STEPS, 10)
  assert not any(lower == "jacobian_exact" for lower, _ in quick.pairs)
  full = image_sweep.parse_args(["--workdir=w", "--pairs=jacobian_exact:none"])
  assert (full.seeds, full.num_steps, full.pairs) == (3, 8_000, [("jacobian_exact", "none")])
  smoke = image_sweep.parse_args(["--workdir=w", "--config=digits:smoke"])
  assert (smoke.name, smoke.preset, smoke.num_steps) == ("digits", "smoke", 6)
  with pytest.raises(SystemExit):  # an unknown preset, before anything runs
    image_sweep.parse_args(["--workdir=w", "--config=digits:smok"])


def test_a_data_set_that_is_not_prepared_stops_the_sweep_before_any_run(tmp_path):
  argv = [f"--workdir={tmp_path}", "--config=cifar10:smoke", "--pairs=jacobian:none", "--seeds=1",
          f"--set=data.data_dir={tmp_path / 'no_data'}"]
  with pytest.raises(SystemExit, match="tfds build cifar10"):
    image_sweep.main(argv)
  assert not list(tmp_path.glob("cifar10/*"))


def test_a_run_evaluates_at_its_end_and_keeps_the_configs_checkpoints():
  spec = grid.RunSpec("digits", "mutual_info", "r1", 2)
  config = image_sweep.create_config(spec, 8_000, {"training.batch_size": 32})
  assert (config.seed, config.bounds.lower, config.bounds.upper) == (2, "mutual_info", "r1")
  assert (config.eval.every_steps, config.checkpoint.every_steps) == (8_000, 1_000)  # resumable inside a run
  assert config.training.batch_size == 32 and not config.log.progress_bar
  short = image_sweep.create_config(spec, 6, preset="smoke")
  assert (short.model.width, short.checkpoint.every_steps, short.eval.every_steps) == (8, 3, 6)
  with pytest.raises(ValueError, match="unknown config keys"):
    image_sweep.create_config(spec, 10, {"eval.fid_samplez": 3})
  by_path = image_sweep.create_config(spec, 6, config_file=os.path.join(ROOT, "configs", "digits.py:smoke"))
  assert by_path.to_dict() == short.to_dict()


def test_samples_are_drawn_from_the_state_training_returns(tmp_path, monkeypatch):
  """No checkpoint is read back (the run directory holds none): the samples are those of the
  returned state's generator moving average, as the evaluation shows them."""
  import jax
  from bdbounds import evaluators, experiment, train, writers

  spec = grid.RunSpec("digits", "jacobian", "none", 0)
  config = image_sweep.create_config(spec, 6, preset="smoke")
  exp = experiment.create_experiment(config)
  state = jax.jit(exp.init_state)(exp.keys["init"])
  state = state.replace(generator_ema=jax.tree_util.tree_map(lambda p: 0.5 * p, state.generator.params))

  def trained(config, workdir):
    with writers.MetricWriter(workdir) as w:
      w.write_scalars(6, {"train/energy_gap": 0.1, "train/seconds_per_step": 0.01})
    return state, {"fid": 50.0, "inception_score": 3.0}

  monkeypatch.setattr(train, "train_and_evaluate", trained)
  result = image_sweep.run_one(spec, str(tmp_path), 6, preset="smoke")
  assert (result["status"], result["fid"]) == ("finished", 50.0) and "output_error" not in result
  run_dir = spec.run_dir(str(tmp_path))
  assert not os.path.exists(os.path.join(run_dir, "checkpoints"))
  samples = np.load(os.path.join(run_dir, image_sweep.SAMPLES_FILE))
  shared = evaluators.make_shared(exp)
  ema, _ = shared.sample(state.generator_ema, jax.random.PRNGKey(0), image_sweep.GRID_SAMPLES)
  raw, _ = shared.sample(state.generator.params, jax.random.PRNGKey(0), image_sweep.GRID_SAMPLES)
  assert samples.shape == (16, 8, 8, 1)
  np.testing.assert_allclose(samples, np.asarray(ema), atol=1e-6)
  assert not np.allclose(samples, np.asarray(raw), atol=1e-3)  # the moving average, not the last iterate


def test_summarize_run_reads_the_final_evaluation_and_flags_non_finite_measures():
  r = fake_result("jacobian", "none", 0, bits_per_dim=2.5)
  assert (r["status"], r["fid"], r["bits_per_dim"], r["last_step"]) == ("finished", 40.0, 2.5, 15)
  assert r["seconds_per_step"] == pytest.approx(0.04)  # the first record (compilation) left out
  assert r["energy_gap_curve"] == {"step": [5, 10, 15], "energy_gap": [0.5, 0.1, -0.1]}
  json.dumps(r, allow_nan=False)
  assert fake_result("jacobian", "none", 0)["bits_per_dim"] is None  # not a diffusion pairing: no column

  nan = fake_result("jacobian", "none", 0, fid=float("nan"))
  assert nan["diverged"] and nan["fid"] is None and "fid=nan" in nan["error"]
  failed = fake_result("jacobian", "r1", 0, error="NonFiniteError: non-finite loss at step 9 in energy/penalty")
  assert failed["status"] == "diverged" and failed["error"].startswith("NonFiniteError")


def test_tables_give_mean_and_std_over_the_finished_seeds_and_list_the_diverged():
  results = [fake_result("mutual_info", "latent_fisher", 1, fid=30.0),
             fake_result("jacobian", "none", 0, fid=70.0), fake_result("jacobian", "none", 1, fid=74.0),
             fake_result("jacobian", "none", 2, error="NonFiniteError: nan at step 9"),
             fake_result("mutual_info", "latent_fisher", 0, fid=34.0)]
  md = image_sweep.results_markdown(results)
  rows = [line for line in md.splitlines() if line.startswith("| jacobian") or line.startswith("| mutual_info")]
  assert rows[0].startswith("| jacobian + none | 72.0 ± 2.8 | 6.50 ± 0.71 |") and "| 2/3 |" in rows[0]
  assert rows[1].startswith("| mutual_info + latent_fisher | 32.0 ± 2.8 |") and "| 2/2 | 40.0 |" in rows[1]
  assert "| -3.0 ± 0.0 | 2.0 ± 0.0 | estimate | 2/3 |" in rows[0]  # both sides, and what the upper one is
  assert "| conditional | 2/2 |" in rows[1]
  assert "## Diverged runs" in md and "| digits | jacobian+none | 2 | 15 | NonFiniteError: nan at step 9 |" in md
  table = list(csv.DictReader(io.StringIO(image_sweep.results_csv(results))))
  assert [(r["lower"] + "+" + r["upper"], r["seed"]) for r in table] == [
      ("jacobian+none", "0"), ("jacobian+none", "1"), ("jacobian+none", "2"),
      ("mutual_info+latent_fisher", "0"), ("mutual_info+latent_fisher", "1")]
  assert table[2]["fid"] == "" and table[2]["status"] == "diverged"


def test_the_figure_shows_the_lowest_finished_seed_of_each_pairing(tmp_path):
  results = [fake_result("jacobian", "none", 0, error="NonFiniteError: nan"), fake_result("jacobian", "none", 1),
             fake_result("mutual_info", "none", 0)]
  assert not image_sweep.plot_samples(results, str(tmp_path), str(tmp_path / "none.png"))  # nothing saved yet
  for lower, seed in (("jacobian", 1), ("mutual_info", 0)):
    run_dir = grid.RunSpec("digits", lower, "none", seed).run_dir(str(tmp_path))
    os.makedirs(run_dir)
    np.save(os.path.join(run_dir, image_sweep.SAMPLES_FILE), np.zeros((16, 8, 8, 1), np.float32))
  paths = image_sweep.write_reports(str(tmp_path), results)
  assert [os.path.basename(p) for p in paths] == ["results.csv", "results.md", "samples.png"]
  assert os.path.getsize(paths[-1]) > 0


@pytest.mark.slow  # a real sweep in a subprocess: about a minute, mostly compilation
def test_tiny_image_sweep_end_to_end_then_resumed(tmp_path):
  workdir = tmp_path / "sweep"
  argv = [f"--workdir={workdir}", "--config=digits:smoke", "--pairs=mutual_info:none", "--seeds=1",
          "--num_steps=4", "--processes=1"]
  done = subprocess.run([sys.executable, "-m", "bdbounds.experiments.image_sweep", *argv],
                        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  rows = list(csv.DictReader(open(workdir / "results.csv")))
  assert [(r["lower"], r["upper"], r["status"]) for r in rows] == [("mutual_info", "none", "finished")]
  assert math.isfinite(float(rows[0]["fid"])) and float(rows[0]["seconds_per_step"]) > 0
  run_dir = workdir / "digits" / "mutual_info+none" / "seed0"
  assert np.load(run_dir / image_sweep.SAMPLES_FILE).shape == (16, 8, 8, 1)
  assert (workdir / "samples.png").exists() and (run_dir / "eval" / "4.json").exists()

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    image_sweep.main(argv)
  assert "1 runs selected, 1 already done, 0 to train" in out.getvalue()
