"""Evaluators as data: which run is the config's choice, checked when the evaluation is made, and
every mean they report carries its standard error."""

import jax
import numpy as np
import pytest

from bdbounds import evaluators, experiment
from configs import digits, toy


def toy_experiment(**eval_overrides):
  config = toy.get_config("smoke")
  with config.unlocked():
    config.eval.update(eval_overrides)
  return experiment.create_experiment(config)


def test_auto_runs_every_evaluator_that_applies():
  assert evaluators.evaluator_names(toy_experiment()) == ("bound_terms", "upper_bound", "density")
  config = digits.get_config("smoke")
  config.bounds.upper = "diffusion"
  assert evaluators.evaluator_names(experiment.create_experiment(config)) == (
      "bound_terms", "upper_bound", "diffusion_nll", "sample_quality", "samples")


@pytest.mark.parametrize("names, match", [("bound_terms,nosuch", "names 'nosuch'; choose from"),
                                          ("samples", "'samples', which needs images"),
                                          ("diffusion_nll", "needs a time-conditioned energy")])
def test_an_evaluator_that_does_not_exist_or_apply_is_refused_by_name(names, match):
  with pytest.raises(ValueError, match=match):
    evaluators.make_evaluation(toy_experiment(evaluators=names))


def test_the_config_chooses_which_evaluators_run():
  exp = toy_experiment(evaluators="bound_terms")
  report, figure = evaluators.make_evaluation(exp)(exp.init_state(jax.random.PRNGKey(0)), key=jax.random.PRNGKey(1))
  assert figure is None and "nll" not in report and "log_z" not in report
  assert np.isfinite(report["nll_lower_bound"]) and report["nll_lower_bound_stderr"] > 0
  for name in ("energy_data", "energy_fake", "entropy_lower_bound"):
    assert report[f"{name}_stderr"] > 0, name
  assert "upper_penalty" not in report  # the upper side is the upper_bound evaluator's


def test_standard_error_of_the_mean():
  mean, stderr = evaluators.mean_stderr([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5 and stderr == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
  assert evaluators.mean_stderr([5.0]) == (5.0, 0.0)
