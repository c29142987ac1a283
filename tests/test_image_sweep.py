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
from bdbounds.experiments import toy_sweep

RECORDS = [{"step": 5, "train/energy_gap": 0.5, "train/seconds_per_step": 2.0},  # compilation
           {"step": 10, "train/energy_gap": 0.1, "train/seconds_per_step": 0.03},
           {"step": 15, "train/energy_gap": -0.1, "train/seconds_per_step": 0.05},
           {"step": 15, "eval/fid": 40.0}]  # evaluation scalars share the step


def fake_result(lower, upper, seed, *, fid=40.0, error=None, bits_per_dim=None):
  spec = toy_sweep.RunSpec("digits", lower, upper, seed)
  report = None if error else {"fid": fid, "inception_score": 6.0 + seed, "precision": 0.3, "recall": 0.6,
                               "prd_f8": 0.9, "prd_f1_8": 0.8, "nll_lower_bound": -3.0, "energy_data": -1.0}
  if report and bits_per_dim is not None:
    report["bits_per_dim"] = bits_per_dim
  return image_sweep.summarize_run(spec, num_steps=15, report=report, records=RECORDS, error=error, wall_s=9.0)


def test_config_names_take_a_path_or_a_name_and_a_preset_and_refuse_2d_data():
  assert image_sweep.parse_config_name("digits") == ("digits", "")
  assert image_sweep.parse_config_name("configs/cifar10.py:smoke") == ("cifar10", "smoke")
  with pytest.raises(ValueError, match="toy_sweep"):
    image_sweep.parse_config_name("configs/toy.py")
  with pytest.raises(SystemExit):
    image_sweep.parse_args(["--workdir=w", "--config=toy"])
  quick = image_sweep.parse_args(["--workdir=w", "--quick"])
  assert (quick.seeds, quick.num_steps, len(quick.pairs)) == (1, image_sweep.QUICK_STEPS, 10)
  assert not any(lower == "jacobian_exact" for lower, _ in quick.pairs)
  full = image_sweep.parse_args(["--workdir=w", "--pairs=jacobian_exact:none"])
  assert (full.seeds, full.num_steps, full.pairs) == (3, 8_000, [("jacobian_exact", "none")])


def test_a_data_set_that_is_not_prepared_stops_the_sweep_before_any_run(tmp_path):
  argv = [f"--workdir={tmp_path}", "--config=cifar10:smoke", "--pairs=jacobian:none", "--seeds=1",
          f"--set=data.data_dir={tmp_path / 'no_data'}"]
  with pytest.raises(SystemExit, match="tfds build cifar10"):
    image_sweep.main(argv)
  assert not list(tmp_path.glob("cifar10/*"))


def test_a_run_evaluates_at_its_end_and_keeps_the_configs_checkpoints():
  spec = toy_sweep.RunSpec("digits", "mutual_info", "r1", 2)
  config = image_sweep.create_config(spec, 8_000, {"training.batch_size": 32})
  assert (config.seed, config.bounds.lower, config.bounds.upper) == (2, "mutual_info", "r1")
  assert (config.eval.every_steps, config.checkpoint.every_steps) == (8_000, 1_000)  # resumable inside a run
  assert config.training.batch_size == 32 and not config.log.progress_bar
  short = image_sweep.create_config(spec, 6, preset="smoke")
  assert (short.model.width, short.checkpoint.every_steps, short.eval.every_steps) == (8, 3, 6)
  with pytest.raises(ValueError, match="unknown config keys"):
    image_sweep.create_config(spec, 10, {"eval.fid_samplez": 3})


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
    run_dir = toy_sweep.RunSpec("digits", lower, "none", seed).run_dir(str(tmp_path))
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
