"""Image evaluation end to end on digits, offline: bits/dim, FID, IS, precision/recall."""

import dataclasses
import logging
import os

import jax
import numpy as np
import pytest

from bdbounds import evaluators, experiment, parallel, train
from bdbounds.evaluators import feature_nets
from bdbounds.data import images
from configs import digits


def evaluated(tmp_path, upper="diffusion", **eval_overrides):
  config = digits.get_config("smoke")
  config.bounds.lower = "mutual_info"   # the cheapest lower bound to compile
  config.bounds.upper = upper           # diffusion: a time-conditioned energy, so bits per dimension
  config.eval.fid_num_samples = 300
  config.eval.pr_num_samples = 200
  config.eval.batch_size = 128
  config.eval.stats_dir = str(tmp_path / "stats")
  config.eval.update(eval_overrides)
  exp = experiment.create_experiment(config)
  mesh = parallel.create_mesh()
  state = jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(mesh))
  report = evaluators.evaluate_and_write(evaluators.make_evaluation(exp), state, str(tmp_path / "run"),
                                         key=jax.random.PRNGKey(1))
  return config, exp, report


@pytest.mark.slow  # compiles the conv diffusion bound and trains the digit classifier: about a minute
def test_digits_evaluation_reports_bits_per_dim_and_sample_quality(tmp_path):
  config, exp, report = evaluated(tmp_path)
  # The diffusion bound on all 300 test digits (17 levels), in nats and bits per dimension.
  assert report["bits_per_dim_examples"] == 300
  assert np.isfinite(report["diffusion_nll_bound"])
  total = report["diffusion_recon"] + report["diffusion_prior"] + report["diffusion_diffusion"]
  assert report["diffusion_nll_bound"] == pytest.approx(total, rel=1e-5)
  # Bits/dim of 17-level data can be no lower than 0 for any density: −log P ≥ 0.
  assert report["bits_per_dim"] > 0
  # The digit classifier behind the features has learnt digits, so the metrics mean something.
  assert report["feature_net"] == "digits_classifier"
  assert report["feature_net_test_accuracy"] > 0.9
  assert report["fid_num_samples"] == 300 and report["fid_num_reference"] == 300
  assert report["fid"] > 0 and np.isfinite(report["fid"])
  assert 1.0 <= report["inception_score"] <= 10.0
  for name in ("precision", "recall", "prd_f8", "prd_f1_8"):
    assert 0.0 <= report[name] <= 1.0, name
  cached = os.listdir(tmp_path / "stats")
  assert len(cached) == 1 and cached[0].startswith("digits-8x8x1-train-300-200-digits_classifier-")
  # Text summary and the saved report.
  text = evaluators.format_report(report, "run")
  assert "bits/dim" in text and "FID" in text
  assert os.path.exists(tmp_path / "run" / "eval" / "0.json")


def test_reference_statistics_are_computed_once_and_cached(tmp_path):
  net = feature_nets.digits_classifier_net(8, 128)
  dataset = images.get_image_dataset("digits")
  first = feature_nets.reference_features(net, dataset, "train", 300, 200, str(tmp_path))
  assert first["features"].shape == (200, 128) and first["sigma"].shape == (128, 128)

  def no_reading(indices):
    raise AssertionError("the reference images were read again instead of the cache")
  unreadable = dataclasses.replace(dataset, read_train=no_reading)
  second = feature_nets.reference_features(net, unreadable, "train", 300, 200, str(tmp_path))
  for name in ("mu", "sigma", "features"):
    np.testing.assert_array_equal(first[name], second[name])
  # Another protocol (here the test split, capped at its 300 images) is another file.
  test_stats = feature_nets.reference_features(net, dataset, "test", 10_000, 200, str(tmp_path))
  assert int(test_stats["num_examples"]) == 300 and len(os.listdir(tmp_path)) == 2
  with pytest.raises(ValueError, match="fid_reference"):
    feature_nets.reference_features(net, dataset, "validation", 10, 10, str(tmp_path))


def test_without_inception_weights_the_image_metrics_are_skipped_with_one_line(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    _, _, report = evaluated(tmp_path, upper="none", feature_net="inception")
  assert "fid" not in report and "bits_per_dim" not in report and np.isfinite(report["nll_lower_bound"])
  lines = [r.getMessage() for r in caplog.records if "inception_weights" in r.getMessage()]
  assert len(lines) == 1 and "convert_fid_inception" in lines[0]


def test_the_digit_classifier_refuses_other_data(tmp_path):
  config = digits.get_config("smoke")
  exp = experiment.create_experiment(config)
  with pytest.raises(ValueError, match="inception"):
    evaluators.create_feature_net(exp._replace(dataset=dataclasses.replace(exp.dataset, name="mnist")))


def test_inception_weights_of_the_wrong_shape_are_refused_by_name(tmp_path):
  from bdbounds.evaluators import inception_weights
  shapes = inception_weights.expected_variable_shapes()
  arrays = {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}
  arrays["params/fc/kernel"] = np.zeros((2048, 1000), np.float32)  # an ImageNet-1k head
  np.savez(tmp_path / "wrong.npz", **arrays)
  with pytest.raises(inception_weights.InceptionWeightsError, match="params/fc/kernel"):
    evaluated(tmp_path, upper="none", feature_net="inception", inception_weights=str(tmp_path / "wrong.npz"))


def test_bad_evaluation_settings_stop_a_run_before_it_starts(tmp_path):
  from bdbounds.evaluators import inception_weights
  arrays = {key: np.zeros(shape, np.float32) for key, shape in inception_weights.expected_variable_shapes().items()}
  arrays["params/fc/kernel"] = np.zeros((2048, 1000), np.float32)
  np.savez(tmp_path / "wrong.npz", **arrays)
  for key, value, match in (("inception_weights", str(tmp_path / "wrong.npz"), "params/fc/kernel"),
                            ("fid_reference", "validation", "fid_reference"),
                            ("feature_net", "vgg", "feature_net")):
    config = digits.get_config("smoke")
    config.eval.feature_net = "inception"
    config.eval[key] = value
    with pytest.raises(experiment.ConfigError, match=match):
      train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written: the corrected command starts clean


@pytest.mark.slow
def test_inception_features_drive_the_image_metrics(tmp_path):
  from bdbounds.evaluators import inception_weights
  from bdbounds.models import inception
  module = inception.build_fid_inception()
  variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 75, 75, 3), np.float32))
  inception_weights.save_inception_variables(tmp_path / "random.npz", variables)
  _, _, report = evaluated(tmp_path, upper="none", feature_net="inception", fid_num_samples=24,
                           pr_num_samples=12, batch_size=12, inception_weights=str(tmp_path / "random.npz"))
  assert report["feature_net"] == "inception"
  assert np.isfinite(report["fid"]) and report["fid"] >= 0
  assert 1.0 <= report["inception_score"] and 0 <= report["precision"] <= 1
