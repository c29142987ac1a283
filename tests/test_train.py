"""End-to-end trainer tests on 2-D data: every pairing, resume, tracing, the bound sandwich."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from bdbounds import bounds, evaluate, experiment, models, objectives, parallel, steps, train
from configs import toy


def smoke_config(*overrides, preset="smoke"):
  config = toy.get_config(preset)
  with config.unlocked():
    config.update_from_flattened_dict(dict(overrides))
  return config


def params_of(state):
  return jax.device_get((state.energy.params, state.generator.params))


# Every lower and every upper bound at least once, the default pairing among them; the other
# ten pairings are marked slow, so the default suite compiles five train steps, not fifteen.
CORE_PAIRINGS = [("jacobian", "latent_fisher"), ("jacobian", "none"), ("jacobian_exact", "r1"),
                 ("mutual_info", "score_matching"), ("mutual_info", "diffusion")]
OTHER_PAIRINGS = [p for p in itertools.product(objectives.LOWER_BOUNDS, objectives.UPPER_BOUNDS)
                  if p not in CORE_PAIRINGS]


def test_the_core_pairings_cover_every_bound():
  assert {lower for lower, _ in CORE_PAIRINGS} == set(objectives.LOWER_BOUNDS)
  assert {upper for _, upper in CORE_PAIRINGS} == set(objectives.UPPER_BOUNDS)
  assert len(CORE_PAIRINGS) + len(OTHER_PAIRINGS) == len(objectives.LOWER_BOUNDS) * len(objectives.UPPER_BOUNDS)


@pytest.mark.parametrize("lower, upper", CORE_PAIRINGS)
def test_each_bound_trains_a_few_finite_steps(lower, upper):
  check_pairing_trains(lower, upper)


@pytest.mark.slow
@pytest.mark.parametrize("lower, upper", OTHER_PAIRINGS)
def test_every_other_pairing_trains_a_few_finite_steps(lower, upper):
  check_pairing_trains(lower, upper)


def test_the_barber_agakov_encoder_trains_a_few_finite_steps():
  exp, state = check_pairing_trains("mutual_info", "none", mi_estimator="barber_agakov")
  assert isinstance(exp.nets.critic.__self__, models.GaussianEncoder)
  z = jax.random.normal(jax.random.PRNGKey(3), (8, exp.latent_dim))
  bound = exp.game.entropy_bound(state.generator.params, state.critic.params, z, jax.random.PRNGKey(4))
  assert bound.per_example.shape == (8,) and np.isfinite(bound.value)


def check_pairing_trains(lower, upper, mi_estimator="dv"):
  config = smoke_config(("bounds.lower", lower), ("bounds.upper", upper), ("bounds.mi_estimator", mi_estimator))
  exp = experiment.create_experiment(config)
  step = jax.jit(steps.make_train_step(exp.game, exp.optimizers, latent_dim=exp.latent_dim,
                                       energy_steps=1, generator_steps=1))
  state = exp.init_state(jax.random.PRNGKey(0))
  batch_fn = train.make_batch_fn(exp, parallel.create_mesh())
  for i in range(3):
    state, metrics = step(state, batch_fn(i), jax.random.PRNGKey(2))
  chex.assert_tree_all_finite((params_of(state), metrics))
  assert int(state.step) == 3 and int(state.skipped_updates) == 0
  assert (state.critic is not None) == (lower == "mutual_info")
  expected = {"train/energy_gap", "train/generator/entropy", "train/energy/penalty", "train/nll_lower_bound"}
  assert expected <= set(metrics)
  return exp, state


def test_main_job_writes_the_output_contract(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  state, report = train.train_and_evaluate(smoke_config(), workdir)
  assert int(state.step) == report["step"] == 20
  for name in ("config.json", "metrics.jsonl", "checkpoints", "plots/20.png", "eval/20.json", "eval/10.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "eval", "20.json")) as f:
    assert json.load(f)["nll"] == pytest.approx(report["nll"])
  assert "test NLL (exact)" in capsys.readouterr().out
  # Loaders used by notebooks and external checks.
  energy = evaluate.load_energy(workdir)
  assert energy(np.zeros((5, 2), np.float32)).shape == (5,)
  samples = evaluate.load_generator(workdir)(jax.random.PRNGKey(0), 7)
  assert samples.shape == (7, 2) and np.all(np.isfinite(samples))


@pytest.mark.slow  # three training runs; test_reliability's kill-and-resume tests are slow too
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
  # A constant learning rate and no data noise, so that stopping at step 10 (by a smaller step
  # budget) leaves the rest of the run's schedules unchanged; both depend on training.num_steps.
  settings = (("eval.every_steps", 1000), ("training.lr_decay", False), ("training.data_noise", 0.0))
  _, full = train.train_and_evaluate(smoke_config(*settings), str(tmp_path / "full"))
  interrupted = str(tmp_path / "resumed")
  train.train_and_evaluate(smoke_config(("training.num_steps", 10), *settings), interrupted)
  _, resumed = train.train_and_evaluate(smoke_config(*settings), interrupted)
  assert full["step"] == resumed["step"] == 20
  a = evaluate.load_energy(str(tmp_path / "full"))
  b = evaluate.load_energy(interrupted)
  x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
  np.testing.assert_array_equal(a(x), b(x))
  assert full["nll"] == resumed["nll"]


def test_workdir_of_a_different_config_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train.check_workdir_config(smoke_config(), workdir)
  train.check_workdir_config(smoke_config(("training.num_steps", 99)), workdir)  # a longer run is fine
  with pytest.raises(ValueError, match="bounds.upper"):
    train.check_workdir_config(smoke_config(("bounds.upper", "r1")), workdir)


def test_train_step_is_traced_once():
  config = smoke_config()
  exp = experiment.create_experiment(config)
  mesh = parallel.create_mesh()
  traced = chex.assert_max_traces(n=1)(steps.make_train_step(
      exp.game, exp.optimizers, latent_dim=exp.latent_dim, energy_steps=1, generator_steps=1))
  step = parallel.jit_train_step(traced, mesh)
  state = jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(mesh))
  batch_fn = train.make_batch_fn(exp, mesh)
  for i in range(4):
    state, _ = step(state, batch_fn(i), jax.random.PRNGKey(2))
  assert int(state.step) == 4


def test_bad_presets_and_settings_are_explained():
  with pytest.raises(ValueError, match="unknown preset 'ringz'"):
    toy.get_config("ringz")
  with pytest.raises(ValueError, match="bounds.upper='gp'"):
    experiment.create_experiment(smoke_config(("bounds.upper", "gp")))
  with pytest.raises(ValueError, match="divisible"):
    parallel.check_batch_size(3, type("M", (), {"size": 2})())


def test_negative_phase_is_importance_weighted_where_the_generator_has_a_density():
  assert experiment.create_experiment(smoke_config()).settings.importance_weighting
  for overrides in ((("bounds.lower", "mutual_info"),), (("bounds.negative_phase", "samples"),),
                    (("model.latent_dim", 3),)):
    assert not experiment.create_experiment(smoke_config(*overrides)).settings.importance_weighting, overrides
  with pytest.raises(experiment.ConfigError, match="negative_phase='importance' needs the generator's density"):
    experiment.create_experiment(smoke_config(("bounds.lower", "mutual_info"), ("bounds.negative_phase", "importance")))
  with pytest.raises(experiment.ConfigError, match="bounds.negative_phase='both' is not one of"):
    experiment.create_experiment(smoke_config(("bounds.negative_phase", "both")))


@pytest.mark.parametrize("upper,defensive", [("none", 0), ("latent_fisher", 0), ("latent_fisher", 8)])
def test_importance_weighted_energy_loss_is_data_energy_plus_log_z_estimate(upper, defensive):
  """The loss against a by-hand computation; with the latent-Fisher penalty, the scores shared
  with the importance weights give the penalty the standalone path computes; defensive
  samples join the generator's, each weighed by its own proposal's density."""
  exp = experiment.create_experiment(smoke_config(("bounds.upper", upper), ("bounds.defensive_samples", defensive)))
  state = exp.init_state(jax.random.PRNGKey(0))
  energy_params, gen_params = state.energy.params, state.generator.params
  x_data = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  z = jax.random.normal(jax.random.PRNGKey(2), (16, 2))
  key = jax.random.PRNGKey(3)
  loss, terms = exp.game.energy_loss(energy_params, gen_params, x_data, z, 0, key)
  generator_fn = lambda z: exp.nets.generator(gen_params, z)
  x_fake = jax.vmap(generator_fn)(z)
  log_q = np.array([-0.5 * zi @ zi - np.log(2 * np.pi) - np.log(abs(np.linalg.det(jax.jacfwd(generator_fn)(zi))))
                    for zi in np.asarray(z)])
  energy = jax.vmap(lambda x: exp.nets.energy(energy_params, x))
  log_w = -np.asarray(energy(x_fake)) - log_q
  if defensive:
    x0, log_q0 = bounds.data_kernel_proposal(jax.random.split(key)[0], x_data, defensive)
    log_w = np.concatenate([log_w, -np.asarray(energy(x0)) - np.asarray(log_q0)])
  log_z = np.log(np.mean(np.exp(log_w - log_w.max()))) + log_w.max()
  penalty = exp.game.upper_penalty(energy_params, gen_params, x_data, x_fake, z, jax.random.split(key)[1])
  np.testing.assert_allclose(terms["penalty"], penalty, rtol=1e-4)
  expected = np.mean(energy(x_data)) + log_z + exp.game.upper_weight(0) * penalty
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert 1 / (16 + defensive) <= terms["ess"] <= 1


def test_data_noise_is_annealed_to_zero():
  np.testing.assert_allclose([float(steps.data_noise_std(s, 0.3, 100)) for s in (0, 50, 100, 150)],
                             [0.3, 0.075, 0.0, 0.0], rtol=1e-6)
  assert float(steps.data_noise_std(10, 0.0, 100)) == 0.0
  config = smoke_config(("training.data_noise", 0.3), ("training.data_noise_fraction", 0.5))
  exp = experiment.create_experiment(config)
  step = jax.jit(steps.make_train_step(exp.game, exp.optimizers, latent_dim=exp.latent_dim,
                                       energy_steps=1, generator_steps=1, data_noise=0.3, data_noise_steps=10))
  state = exp.init_state(jax.random.PRNGKey(0))
  batch_fn = train.make_batch_fn(exp, parallel.create_mesh())
  seen = []
  for i in range(12):
    state, metrics = step(state, batch_fn(i), jax.random.PRNGKey(2))
    seen.append(float(metrics["train/data_noise"]))
  np.testing.assert_allclose(seen[:3], [0.3, 0.3 * 0.81, 0.3 * 0.64], rtol=1e-5)
  assert seen[10:] == [0.0, 0.0]


def test_trained_model_respects_the_sandwich(tmp_path):
  """After real training, the NLL lower bound sits below the exact NLL (quadrature)."""
  config = toy.get_config("8gaussians")
  with config.unlocked():
    config.training.num_steps = 1500
    config.eval.every_steps = 1500
    config.checkpoint.every_steps = 1500
    config.log.every_steps = 500
    config.log.progress_bar = False
  _, report = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert report["quadrature_converged"]
  assert report["nll_lower_bound"] <= report["nll"]
  assert report["kl_data_model"] < 1.5  # far better than the untrained model, if not yet good


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "bdbounds.main", "--config=configs/toy.py:smoke", f"--workdir={workdir}",
             "--config.training.num_steps=1000000", "--config.checkpoint.every_steps=1000000",
             "--config.eval.every_steps=1000000", "--config.log.every_steps=5"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 300
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
      assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0][-3000:]
      time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=120)
  finally:
    child.kill()
  assert child.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert "Run the same command to resume" in output
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] >= 5, saved  # a step between cadences, saved on the signal
  # The same command (with an attainable budget) picks up from that step.
  budget = saved[-1] + 3
  _, report = train.train_and_evaluate(smoke_config(("training.num_steps", budget), ("checkpoint.every_steps", 1000000),
                                                 ("eval.every_steps", 1000000), ("log.every_steps", 5)),
                                    str(workdir))
  assert report["step"] == budget
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [line["step"] for line in lines if "train/energy_gap" in line]
  # Strictly increasing: the resumed run went on from the saved step, it did not start over.
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == budget, (saved, train_steps)
