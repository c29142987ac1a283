"""The trainer on images (embedded digits, tiny conv models): every pairing, outputs, loaders."""

import itertools
import json
import os

import chex
import jax
import numpy as np
import pytest

from bdbounds import evaluate, experiment, objectives, parallel, train
from configs import digits


def digits_config(**bounds):
  config = digits.get_config("smoke")
  with config.unlocked():
    config.data.image_size = 8  # one up/down-sampling stage: the cheapest conv models to compile (the default)
    config.bounds.update(bounds)
  return config


def run_steps(config, num_steps):
  exp = experiment.create_experiment(config)
  mesh = parallel.create_mesh()
  step = train.make_step_fn(exp, mesh)
  batch_fn = train.make_batch_fn(exp, mesh)
  state = jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(mesh))
  for i in range(num_steps):
    state, metrics = step(state, batch_fn(i), jax.random.PRNGKey(1))
  return exp, state, metrics


# Every lower bound with the default upper bound, and every upper bound with the default lower
# bound: each bound's image code path once (the full grid is marked slow).
CORE_PAIRINGS = sorted({(lower, "latent_fisher") for lower in objectives.LOWER_BOUNDS}
                       | {("jacobian", upper) for upper in objectives.UPPER_BOUNDS})
OTHER_PAIRINGS = sorted(set(itertools.product(objectives.LOWER_BOUNDS, objectives.UPPER_BOUNDS))
                        - set(CORE_PAIRINGS))


def check_pairing(lower, upper):
  exp, state, metrics = run_steps(digits_config(lower=lower, upper=upper), 2)
  chex.assert_tree_all_finite((state.energy.params, state.generator.params, metrics))
  assert int(state.step) == 2 and int(state.skipped_updates) == 0
  assert exp.data_shape == (8, 8, 1)
  # The EMA follows the generator: after two updates it has moved, but not all the way.
  ema, params = jax.tree_util.tree_leaves(state.generator_ema), jax.tree_util.tree_leaves(state.generator.params)
  assert any(not np.array_equal(a, b) for a, b in zip(ema, params))


@pytest.mark.parametrize("lower, upper", CORE_PAIRINGS)
def test_each_bound_trains_on_images(lower, upper):
  check_pairing(lower, upper)


@pytest.mark.slow
@pytest.mark.parametrize("lower, upper", OTHER_PAIRINGS)
def test_every_other_pairing_trains_on_images(lower, upper):
  check_pairing(lower, upper)


def test_digits_main_job_writes_samples_and_the_bound_report(tmp_path, capsys):
  workdir = str(tmp_path / "digits")
  config = digits_config()
  config.eval.stats_dir = str(tmp_path / "stats")  # reference statistics for FID, cached per test
  _, report = train.train_and_evaluate(config, workdir)
  for name in ("config.json", "metrics.jsonl", "checkpoints", "plots/3.png", "plots/6.png", "eval/6.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "eval", "6.json")) as f:
    saved = json.load(f)
  assert saved["nll_lower_bound"] == pytest.approx(report["nll_lower_bound"])
  assert all(np.isfinite(saved[k]) for k in ("energy_data", "energy_fake", "entropy_lower_bound", "upper_penalty",
                                             "fid", "precision", "recall"))
  assert "NLL lower bound" in capsys.readouterr().out
  samples = evaluate.load_generator(workdir)(jax.random.PRNGKey(0), 5)
  assert samples.shape == (5, 8, 8, 1) and np.all(np.abs(samples) <= 1)
  assert evaluate.load_energy(workdir)(samples).shape == (5,)


def test_images_need_a_conv_architecture():
  config = digits_config()
  with config.unlocked():
    config.model.arch = "mlp"
  with pytest.raises(ValueError, match="model.arch"):
    experiment.create_experiment(config)
  with pytest.raises(ValueError, match="unknown data set"):
    with config.unlocked():
      config.data.name = "imagenet"
    experiment.create_experiment(config)
