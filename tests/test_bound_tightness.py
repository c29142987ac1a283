"""Bound tightness: the Jacobian bound's gap against closed forms, the MI path with the optimal
critic against the quadrature entropy, the upper penalty's batch noise, the report, and the
command line on a run directory (untrained here; trained in the slow test)."""

import csv
import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import checkpointing, config_files, experiment, objectives, train, writers
from bdbounds.experiments import bound_tightness as bt
from bdbounds.experiments.sweep import runner

LOG_2PIE = math.log(2 * math.pi * math.e)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_SETTINGS = experiment.bound_settings(config_files.load_config_file(os.path.join(ROOT, "configs", "base.py")), 2)


def bound_settings(**overrides) -> objectives.BoundSettings:
  """configs/base.py's bound settings with the plain negative phase and 2 Krylov iterations, then `overrides`."""
  return dataclasses.replace(BASE_SETTINGS, **{"importance_weighting": False, "defensive_samples": 0,
                                               "jacobian_num_iters": 2, **overrides})


def game(settings, nets) -> objectives.Objectives:
  return objectives.make_objectives(settings, nets)


def gaussian_entropy(cov):
  return 0.5 * np.linalg.slogdet(2 * np.pi * np.e * np.asarray(cov))[1]


def rotation(angle):
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c, -s], [s, c]])


A = np.array([[1.0, 0.3], [-0.2, 0.5]])
B = np.array([0.5, -1.0])


# ---------------------------------------------------------------------------------------------
# Jacobian bound gap on linear generators


LINEAR_NETS = objectives.Networks(energy=None, time_energy=None, generator=lambda p, z: p["A"] @ z + p["b"],
                                  sigma=None, critic=None)


@functools.lru_cache(maxsize=None)
def linear_fns(settings):
  # Parameters are arguments of the jitted functions: generators of one shape share a compilation,
  # and the exact value and det J's sign, which no bound setting changes, are compiled once.
  fns = bt.make_entropy_fns(game(settings, LINEAR_NETS))
  default = bound_settings(upper="none")
  if settings != default:
    fns.update({name: linear_fns(default)[name] for name in ("exact", "det_sign")})
  return fns


def measure_linear(matrix, **settings):
  s = bound_settings(lower=settings.pop("lower", "jacobian"), upper="none", **settings)
  params = {"A": jnp.asarray(matrix, jnp.float32), "b": jnp.ones((matrix.shape[0],), jnp.float32)}
  return bt.measure_entropy(game(s, LINEAR_NETS), params, None, latent_dim=matrix.shape[1], key=jax.random.PRNGKey(0),
                            num_batches=3, batch_size=8, fns=linear_fns(s))


def with_singular_values(values, seed=0):
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.standard_normal((len(values),) * 2))
  v, _ = np.linalg.qr(rng.standard_normal((len(values),) * 2))
  return u @ np.diag(values) @ v.T


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_jacobian_bound_is_exact_for_a_conformal_linear_generator(method):
  # A = c·Q: both singular values equal c, so d·log s_min = log|det A| = 2 log c.
  r = measure_linear(1.7 * rotation(0.6), jacobian_method=method)
  exact = LOG_2PIE + 2 * math.log(1.7)
  assert r["exact_entropy"] == pytest.approx(exact, abs=1e-4)
  assert r["entropy_bound"] == pytest.approx(exact, abs=1e-4)
  assert abs(r["entropy_gap"]) < 1e-4 and r["entropy_gap_std"] < 1e-5 and r["entropy_bound_std"] < 1e-5
  assert r["fold_fraction"] == 0.0 and r["ms_entropy_bound"] > 0


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_jacobian_gap_with_unequal_singular_values(method):
  # logdet_lower_bound: Σ_{i<k} log s_(i) + (d − k + 1) log s_(k), so the gap to Σ_i log s_i is
  # Σ_{i>k} log(s_(i) / s_(k)): log(s_max / s_min) for d = 2, k = 1, whatever the latent.
  r = measure_linear(with_singular_values([3.0, 0.5]), jacobian_method=method, jacobian_num_iters=2)
  assert r["exact_entropy"] == pytest.approx(LOG_2PIE + math.log(1.5), abs=1e-4)
  assert r["entropy_gap"] == pytest.approx(math.log(6.0), abs=1e-4)
  assert r["entropy_bound"] == pytest.approx(LOG_2PIE + 2 * math.log(0.5), abs=1e-4)


def test_jacobian_gap_in_three_dimensions_shrinks_with_k():
  s = [0.5, 1.0, 4.0]
  matrix = with_singular_values(s, seed=1)
  gaps = [measure_linear(matrix, jacobian_k=k)["entropy_gap"] for k in (1, 2, 3)]
  assert gaps[0] == pytest.approx(math.log(1.0 / 0.5) + math.log(4.0 / 0.5), abs=1e-4)
  assert gaps[1] == pytest.approx(math.log(4.0 / 1.0), abs=1e-4)
  assert gaps[2] == pytest.approx(0.0, abs=1e-4)  # k = d: the bound is ½ log det JᵀJ


def test_one_batch_has_no_spread_and_the_report_shows_none():
  # One mean_std for every table: the sample std of one value is undefined (None), not 0.
  s = bound_settings(upper="none")
  params = {"A": jnp.asarray(1.7 * rotation(0.6), jnp.float32), "b": jnp.ones((2,), jnp.float32)}
  r = bt.measure_entropy(game(s, LINEAR_NETS), params, None, latent_dim=2, key=jax.random.PRNGKey(0), num_batches=1,
                         batch_size=8, fns=linear_fns(s))
  assert r["entropy_bound"] == pytest.approx(LOG_2PIE + 2 * math.log(1.7), abs=1e-4)
  assert r["entropy_bound_std"] is None and r["entropy_gap_std"] is None and r["exact_entropy_error"] is None
  row = bt.markdown_row({"dataset": "d", "lower": "jacobian", "upper": "none", "seed": 0, **r})
  assert f"| {r['exact_entropy']:.3f} | {r['entropy_gap']:.3f} | — | — |" in row


def test_a_folding_generator_is_flagged():
  # G(z) = (z1, z2²): det J = 2 z2 changes sign, two latents per point. H(z) + E log|det J| then
  # over-states H(q) by log 2 (q(x) sums both preimages), which the report marks.
  nets = objectives.Networks(None, None, lambda p, z: jnp.stack([z[0], z[1] ** 2]), None, None)
  r = bt.measure_entropy(game(bound_settings(upper="none"), nets), {}, None, latent_dim=2,
                         key=jax.random.PRNGKey(1), num_batches=4, batch_size=100)
  assert 0.4 < r["fold_fraction"] <= 0.5
  assert bt.markdown_row({"dataset": "d", "lower": "jacobian", "upper": "none", "seed": 0, **r}).count("†") == 1


# ---------------------------------------------------------------------------------------------
# Mutual-information bound with the optimal critic


@pytest.mark.parametrize("estimator,shift", [("nwj", 1.0), ("dv", 0.0)])
def test_mi_bound_with_the_optimal_critic_against_the_quadrature(estimator, shift):
  # x = A z + σ ε: with T*(x, z) = log N(x; Az, σ²I) − log N(x; 0, AAᵀ + σ²I) (+ 1 for NWJ, whose
  # optimum is shifted: with T* itself NWJ falls e⁻¹ short) each bound equals I(x; z) up to its
  # minibatch effects: none for NWJ, while DV's log-mean-exp plug-in OVER-states it by O(1/B)
  # (about 0.07 nats here at B = 200). So H_lb = I + H(x|z) ≈ H(q) = ½ log det 2πe(AAᵀ + σ²I).
  sigma, num_batches = 0.5, 20
  cov = A @ A.T + sigma**2 * np.eye(2)
  inv, logdet = jnp.asarray(np.linalg.inv(cov), jnp.float32), float(np.linalg.slogdet(cov)[1])
  a = jnp.asarray(A, jnp.float32)

  def critic(params, x, z):
    r = x - a @ z
    return -0.5 * jnp.sum(r**2) / sigma**2 - 2 * math.log(sigma) + 0.5 * x @ inv @ x + 0.5 * logdet + shift

  nets = objectives.Networks(None, None, lambda p, z: a @ z, lambda p: jnp.asarray(sigma), critic)
  settings = bound_settings(lower="mutual_info", upper="none", mi_estimator=estimator)
  r = bt.measure_entropy(game(settings, nets), {}, {}, latent_dim=2, key=jax.random.PRNGKey(2),
                         num_batches=num_batches, batch_size=200, num_quadrature_samples=20_000)
  assert r["exact_entropy"] == pytest.approx(gaussian_entropy(cov), abs=0.02)
  assert r["sigma"] == pytest.approx(sigma) and 0 < r["exact_entropy_error"] < 0.02
  assert 0 < r["entropy_bound_std"] < 0.2
  assert r["entropy_gap_std"] == pytest.approx(r["entropy_bound_std"])  # one reference for every batch
  tolerance = 0.02 + 4 * r["entropy_gap_std"] / math.sqrt(num_batches)
  if estimator == "dv":
    assert r["entropy_gap"] < tolerance  # biased up: a negative gap is DV's, not the quadrature's
  else:
    assert abs(r["entropy_gap"]) < tolerance


def test_a_long_run_critic_closes_the_gap_a_fresh_critic_leaves():
  # x = A z + σ ε, I(x; z) = ½ log det(AAᵀ + σ²I)/σ⁴ ≈ 1.2 nats. A freshly initialised MLP critic
  # carries almost no information, so its DV bound sits near H(x|z); trained on the frozen
  # generator it reaches the exact entropy up to DV's small minibatch bias (see above).
  from bdbounds.models.toy import Critic
  sigma = 0.5
  a = jnp.asarray(A, jnp.float32)
  critic = Critic((32, 32))
  nets = objectives.Networks(None, None, lambda p, z: a @ z, lambda p: jnp.asarray(sigma), critic.apply)
  mi = game(bound_settings(lower="mutual_info", upper="none", mi_estimator="dv"), nets)
  fresh = critic.init(jax.random.PRNGKey(0), jnp.zeros(2), jnp.zeros(2))
  trained = bt.train_critic(mi, fresh, {}, latent_dim=2, key=jax.random.PRNGKey(1), num_steps=1500,
                            batch_size=200, learning_rate=1e-3)
  r = bt.measure_entropy(mi, {}, fresh, latent_dim=2, key=jax.random.PRNGKey(2), num_batches=10,
                         batch_size=200, num_quadrature_samples=20_000, long_critic_params=trained)
  assert r["exact_entropy"] == pytest.approx(gaussian_entropy(A @ A.T + sigma**2 * np.eye(2)), abs=0.02)
  assert r["entropy_gap"] > 0.8
  assert -0.15 < r["entropy_gap_long_critic"] < 0.1
  assert r["entropy_bound_long_critic"] == pytest.approx(r["exact_entropy"] - r["entropy_gap_long_critic"])


# ---------------------------------------------------------------------------------------------
# Upper penalty: value and batch noise


class NormalData:
  name = "normal"

  @staticmethod
  def sample(key, n):
    return jax.random.normal(key, (n, 2))


def test_upper_penalty_mean_and_batch_noise():
  # R1 of E(x) = ½‖x‖² on N(0, I) data: ‖∇E‖² = ‖x‖² ~ χ²₂ (mean 2, variance 4), so a batch mean
  # has std 2/√B.
  nets = objectives.Networks(energy=lambda p, x: 0.5 * jnp.sum(x**2), time_energy=None,
                             generator=lambda p, z: z, sigma=None, critic=None)
  settings = bound_settings(upper="r1", weight_schedule="constant", upper_weight=0.25)
  r = bt.measure_upper(game(settings, nets), {}, {}, dataset=NormalData(), latent_dim=2, key=jax.random.PRNGKey(3),
                       num_batches=20, batch_size=100)
  assert r["upper_penalty_mean"] == pytest.approx(2.0, abs=0.15)
  assert 0.1 < r["upper_penalty_std"] < 0.3
  assert r["upper_weight"] == pytest.approx(0.25) and r["ms_upper_penalty"] > 0
  assert bt.measure_upper(game(bound_settings(upper="none"), nets), {}, {}, dataset=NormalData(),
                          latent_dim=2, key=jax.random.PRNGKey(3), num_batches=2, batch_size=4) == {}


# ---------------------------------------------------------------------------------------------
# Runs, report


def write_result(run_dir, dataset, lower, upper, seed, **extra):
  writers.write_json(os.path.join(run_dir, "result.json"),
                     {"dataset": dataset, "lower": lower, "upper": upper, "seed": seed, **extra})


def test_find_runs_skips_diverged_and_checkpointless_runs(tmp_path):
  def run(pairing, seed, checkpoint=True, **extra):
    d = tmp_path / "moons" / pairing / f"seed{seed}"
    os.makedirs(d / "checkpoints" / "10" if checkpoint else d)
    write_result(str(d), "moons", *pairing.split("+"), seed, **extra)

  run("mutual_info+r1", 0)
  run("jacobian+none", 1)
  run("jacobian+none", 0)
  run("jacobian+r1", 0, status="diverged", diverged=True, error="NonFiniteError: nan at step 7")
  run("jacobian+diffusion", 0, checkpoint=False, status="converged")
  runs, skipped = runner.find_runs(str(tmp_path))
  assert [(r["lower"], r["upper"], r["seed"]) for _, r in runs] == [
      ("jacobian", "none", 0), ("jacobian", "none", 1), ("mutual_info", "r1", 0)]
  assert [(r["upper"], reason) for r, reason in skipped] == [
      ("r1", "diverged: NonFiniteError: nan at step 7"), ("diffusion", "no checkpoint")]
  assert len(runner.find_runs(str(tmp_path), seed=1)[0]) == 1
  assert runner.find_runs(str(tmp_path), datasets=["rings"]) == ([], [])


def test_markdown_and_csv_rows():
  row = {"dataset": "rings", "lower": "mutual_info", "upper": "diffusion", "seed": 1, "step": 2000,
         "entropy_bound": 1.5, "entropy_bound_std": 0.02, "exact_entropy": 2.0, "exact_entropy_error": 0.004,
         "entropy_gap": 0.5, "entropy_gap_std": 0.02, "upper_penalty_mean": 3.25, "upper_penalty_std": 0.5,
         "diffusion_nll_bound": 3.5, "nll": 3.25, "diffusion_minus_nll": 0.25, "ms_entropy_bound": 1.234,
         "ms_upper_penalty": 2.5, "num_batches": 20, "batch_size": 200, "sigma": 0.1,
         "entropy_gap_long_critic": 0.125, "entropy_gap_long_critic_std": 0.03}
  other = {"dataset": "8gaussians", "lower": "jacobian", "upper": "none", "seed": 0, "entropy_bound": 1.0,
           "entropy_bound_std": 0.1, "exact_entropy": 1.2, "exact_entropy_error": 0.01, "entropy_gap": 0.2,
           "entropy_gap_std": 0.05, "ms_entropy_bound": 0.5, "num_batches": 20, "batch_size": 200}
  md = bt.results_markdown([row, other], [({"dataset": "moons", "lower": "jacobian", "upper": "r1", "seed": 0},
                                           "diverged: NonFiniteError | nan")])
  assert ("| rings | mutual_info+diffusion | 1 | 1.500 | 2.000 ± 0.004 | 0.500 ± 0.02 | 0.125 ± 0.03 | 0.0200 | "
          "3.2500 ± 0.5 | 3.500 / 3.250 (+0.250) | 1.23 | 2.50 |") in md
  assert ("| 8gaussians | jacobian+none | 0 | 1.000 | 1.200 ± 0.01 | 0.200 ± 0.05 | — | 0.1000 | — | — | 0.50 | — |"
          in md)
  assert md.index("8gaussians") < md.index("| rings")  # data-set order of TOY_DATASETS
  assert "| moons | jacobian+r1 | 0 | diverged: NonFiniteError \\| nan |" in md
  rows = list(csv.DictReader(bt.results_csv([row, other]).splitlines()))
  assert [r["dataset"] for r in rows] == ["8gaussians", "rings"] and list(rows[0]) == list(bt.CSV_COLUMNS)
  assert rows[0]["upper_penalty_mean"] == "" and float(rows[1]["sigma"]) == 0.1
  assert "no finished runs" in bt.results_markdown([])


# ---------------------------------------------------------------------------------------------
# End to end


def tiny_config(lower, upper):
  config = config_files.load_config_file(os.path.join(ROOT, "configs", "toy.py") + ":8gaussians,smoke")
  return config_files.apply_overrides(config, {
        "bounds.lower": lower, "bounds.upper": upper, "training.num_steps": 10, "eval.every_steps": 10,
        "checkpoint.every_steps": 10, "data.num_test": 500, "eval.diffusion_num_t": 4,
        # One narrow hidden layer: less to compile (as in tests/test_toy_sweep.py).
        "model.energy_hidden": (16,), "model.generator_hidden": (16,), "model.critic_hidden": (16,)})


def untrained_run(run_dir, lower, upper):
  """A run directory as the sweep leaves it, holding the initial state (no training)."""
  config = tiny_config(lower, upper)
  exp = experiment.create_experiment(config)
  state = jax.jit(exp.init_state)(exp.keys["init"])  # one compilation, not one per op
  train.check_workdir_config(config, str(run_dir))
  with checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints")) as ckpt:
    ckpt.save(0, state)
  writers.write_json(os.path.join(run_dir, "eval", "0.json"), {"step": 0, "nll": 4.0})  # no diffusion bound
  write_result(str(run_dir), "8gaussians", lower, upper, 0, status="collapsed", diverged=False)


def test_command_line_on_an_untrained_run(tmp_path, capsys):
  sweep = tmp_path / "sweep"
  untrained_run(sweep / "8gaussians" / "jacobian+r1" / "seed0", "jacobian", "r1")
  diverged = sweep / "8gaussians" / "jacobian+r1" / "seed1"
  write_result(str(diverged), "8gaussians", "jacobian", "r1", 1, status="diverged", diverged=True, error="nan")
  output = tmp_path / "report" / "tightness.md"
  rows = bt.main([f"--sweep={sweep}", "--num_batches=3", "--batch_size=16", f"--output={output}"])
  assert len(rows) == 1
  r = rows[0]
  assert (r["lower"], r["upper"], r["seed"], r["step"], r["status"]) == ("jacobian", "r1", 0, 0, "collapsed")
  for name in ("entropy_bound", "exact_entropy", "entropy_gap", "upper_penalty_mean", "upper_weight",
               "ms_entropy_bound", "ms_exact_entropy", "ms_upper_penalty"):
    assert math.isfinite(r[name]), name
  assert r["entropy_gap"] >= -1e-5 and 0 <= r["fold_fraction"] <= 0.5
  assert r["entropy_bound_std"] > 0 and r["upper_penalty_std"] > 0  # independent batches
  assert "diffusion_nll_bound" not in r
  md = output.read_text()
  assert "| 8gaussians | jacobian+r1 | 0 |" in md and "| 8gaussians | jacobian+r1 | 1 | diverged: nan |" in md
  assert md in capsys.readouterr().out
  assert len(list(csv.DictReader(open(tmp_path / "report" / "tightness.csv")))) == 1
  with pytest.raises(SystemExit):
    bt.parse_args([f"--sweep={sweep}", "--datasets=ringz"])


@pytest.mark.slow  # trains two tiny runs: about a minute, mostly compilation
def test_trained_runs_and_the_recomputed_diffusion_bound(tmp_path):
  sweep = tmp_path / "sweep"
  for lower, upper in (("jacobian", "latent_fisher"), ("mutual_info", "diffusion")):
    run_dir = sweep / "8gaussians" / f"{lower}+{upper}" / "seed0"
    _, report = train.train_and_evaluate(tiny_config(lower, upper), str(run_dir))
    write_result(str(run_dir), "8gaussians", lower, upper, 0, status="collapsed", diverged=False)
  rows = {r["lower"]: r for r in bt.main([f"--sweep={sweep}", "--num_batches=4", "--batch_size=50",
                                          "--num_quadrature_samples=4000", "--critic_steps=200"])}
  assert set(rows) == {"jacobian", "mutual_info"} and (sweep / "tightness.md").exists()
  jac, mi = rows["jacobian"], rows["mutual_info"]
  assert jac["step"] == 10 and jac["entropy_gap"] >= -1e-5  # dense s_min: a true bound on every batch
  assert math.isfinite(jac["upper_penalty_mean"]) and "diffusion_nll_bound" not in jac
  assert "entropy_gap_long_critic" not in jac and mi["critic_steps"] == 200
  # 10 training steps leave the critic far from its optimum: 200 more on the frozen generator tighten the bound.
  assert mi["entropy_bound_long_critic"] > mi["entropy_bound"]
  assert mi["diffusion_source"] == "eval report"
  assert mi["diffusion_nll_bound"] == pytest.approx(report["diffusion_nll_bound"])
  assert mi["nll"] == pytest.approx(report["nll"])

  # An older report without the diffusion bound: recomputed on the evaluation's test set and key.
  exp, state = experiment.restore(str(run_dir))
  recomputed = bt.diffusion_comparison(exp, state, {"nll": report["nll"]})
  assert recomputed["diffusion_source"] == "computed"
  assert recomputed["diffusion_nll_bound"] == pytest.approx(report["diffusion_nll_bound"], rel=1e-5)
