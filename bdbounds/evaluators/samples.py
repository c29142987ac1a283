"""Images: sample quality in a feature network's space (FID, IS, k-NN precision/recall, PRD), and
the grid of generator samples."""

import functools
import logging

import jax
import numpy as np

from bdbounds import metrics, plotting
from bdbounds.evaluators import feature_nets
from bdbounds.evaluators.common import sampling_params


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
  logging.getLogger(__name__).warning("%s", message)


def create_feature_net(exp):
  """The configured feature network, or None (with one line saying how to enable it). A bad name,
  protocol or weights file raises ValueError, so that the run stops before training."""
  e = exp.eval
  feature_nets.check_reference_split(e.fid_reference)
  if e.feature_net == "digits_classifier":
    if exp.dataset.name != "digits":
      raise ValueError(f"eval.feature_net=digits_classifier is trained on digits; {exp.dataset.name} needs "
                       "eval.feature_net=inception with eval.inception_weights")
    return feature_nets.digits_classifier_net(exp.data_shape[0], e.batch_size)
  if e.feature_net != "inception":
    raise ValueError(f"eval.feature_net={e.feature_net!r}; choose one of {feature_nets.FEATURE_NETS}")
  if e.inception_weights is None:
    _say_once("FID, IS and precision/recall skipped: set --config.eval.inception_weights=/path/fid_inception.npz "
              "(make it with python -m bdbounds.tools.convert_fid_inception; see docs/evaluation.md)")
    return None
  return feature_nets.inception_net(e.inception_weights, e.batch_size)


def make_sample_quality(exp, shared):
  """`(state, inputs) -> (report, None)`: FID and IS of `eval.fid_num_samples` samples of the EMA
  generator, k-NN precision/recall and PRD against the reference split's features."""
  net = create_feature_net(exp)
  e = exp.eval

  def evaluate(state, inputs):
    if net is None:
      return {}, None
    reference = feature_nets.reference_features(net, exp.dataset, e.fid_reference, e.fid_num_samples,
                                                e.pr_num_samples, e.stats_dir)
    params, key = sampling_params(state), inputs.keys["quality"]
    features, logits = [], []
    for i in range(-(-e.fid_num_samples // e.batch_size)):
      f, lg = net.features(np.asarray(shared.sample(params, jax.random.fold_in(key, i), e.batch_size)[0]))
      features.append(f)
      logits.append(lg)
    features = np.concatenate(features)[:e.fid_num_samples]
    logits = np.concatenate(logits)[:e.fid_num_samples]
    mu, sigma = metrics.feature_statistics(features)
    is_mean, is_std = metrics.inception_score(logits)
    fake = features[:len(reference["features"])]
    precision, recall = metrics.precision_recall_knn(reference["features"], fake, k=e.pr_k)
    f8, f1_8 = metrics.prd_scores(reference["features"], fake)
    report = {"fid": float(metrics.frechet_distance(mu, sigma, reference["mu"], reference["sigma"])),
              "inception_score": float(is_mean), "inception_score_std": float(is_std),
              "precision": float(precision), "recall": float(recall), "prd_f8": float(f8),
              "prd_f1_8": float(f1_8), "fid_num_samples": len(features),
              "fid_num_reference": int(reference["num_examples"]), "feature_net": net.name}
    report.update({f"feature_net_{k}": v for k, v in net.info.items()})
    return report, None
  return evaluate


def make_sample_grid(exp, shared):
  """`(state, inputs) -> ({}, figure)`: `eval.grid_size` samples of the EMA generator in a grid."""
  def evaluate(state, inputs):
    grid = np.asarray(shared.sample(sampling_params(state), inputs.keys["samples"], exp.eval.grid_size)[0])
    scale = max(1, 32 // grid.shape[1])  # small images are shown at least 32 pixels wide
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    return {}, plotting.image_grid(grid, value_range=(-1.0, 1.0))
  return evaluate
