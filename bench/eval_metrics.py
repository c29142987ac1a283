"""Cost of image evaluation: sample throughput, feature extraction and each metric.

    python bench/eval_metrics.py                          # digits, 10 000 samples, digit classifier
    python bench/eval_metrics.py --num-samples 2000 --workdir runs/digits   # a trained generator
    python bench/eval_metrics.py --config configs/cifar10.py --inception-weights fid_inception.npz

Without `--workdir` the generator is freshly initialised: the costs do not depend on training.
The last row is the whole evaluation (`evaluators.make_evaluation`, including bits per dimension
when the config's energy is time-conditioned) with the reference statistics already cached.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `configs`, `bench`

from bdbounds import evaluators, experiment, metrics, parallel  # noqa: E402
from bdbounds.evaluators import feature_nets  # noqa: E402
from bench.image_step import load_config  # noqa: E402


def timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--num-samples", type=int, default=10_000)
  parser.add_argument("--workdir", default=None, help="evaluate this run's latest checkpoint")
  parser.add_argument("--inception-weights", default=None)
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  args = parser.parse_args()

  config = load_config(args.config, args.set)
  with config.unlocked():
    config.eval.fid_num_samples = args.num_samples
    config.eval.pr_num_samples = min(config.eval.pr_num_samples, args.num_samples)
    config.eval.stats_dir = tempfile.mkdtemp()
    if args.inception_weights:
      config.eval.feature_net, config.eval.inception_weights = "inception", args.inception_weights
  if args.workdir:
    exp, state = experiment.restore(args.workdir, config=config)
  else:
    exp = experiment.create_experiment(config)
    state = jax.device_put(exp.init_state(jax.random.PRNGKey(0)), parallel.replicated(parallel.create_mesh()))
  e, n = exp.eval, args.num_samples
  rows = []

  net, seconds = timed(lambda: evaluators.create_feature_net(exp))
  if net is None:
    sys.exit("no feature network: pass --inception-weights or use configs/digits.py")
  rows.append((f"build the feature network ({net.name})", seconds, ""))
  params, shared = evaluators.sampling_params(state), evaluators.make_shared(exp)
  sample = lambda k: shared.sample(params, k, e.batch_size)[0]
  timed(sample, jax.random.PRNGKey(0))  # compile
  images, seconds = timed(lambda: np.concatenate([np.asarray(sample(jax.random.PRNGKey(i)))
                                                  for i in range(-(-n // e.batch_size))])[:n])
  rows.append((f"sample {n} images", seconds, f"{n / seconds:,.0f} images/s"))
  net.features(images[: e.batch_size])  # compile
  (features, logits), seconds = timed(net.features, images)
  rows.append((f"features of {n} images", seconds, f"{n / seconds:,.0f} images/s"))
  reference, seconds = timed(lambda: feature_nets.reference_features(
      net, exp.dataset, e.fid_reference, e.fid_num_samples, e.pr_num_samples, e.stats_dir))
  rows.append((f"reference statistics ({int(reference['num_examples'])} {e.fid_reference} images, first time)",
               seconds, ""))
  (mu, sigma), seconds = timed(metrics.feature_statistics, features)
  fid, seconds_fid = timed(metrics.frechet_distance, mu, sigma, reference["mu"], reference["sigma"])
  rows.append(("FID (statistics + Fréchet distance)", seconds + seconds_fid, f"FID {fid:.3f}"))
  (score, _), seconds = timed(metrics.inception_score, logits)
  rows.append(("inception score", seconds, f"IS {score:.3f}"))
  fake = features[: len(reference["features"])]
  (precision, recall), seconds = timed(metrics.precision_recall_knn, reference["features"], fake)
  rows.append((f"k-NN precision/recall ({len(fake)} vs {len(reference['features'])})", seconds,
               f"P {precision:.3f} R {recall:.3f}"))
  (f8, f1_8), seconds = timed(metrics.prd_scores, reference["features"], fake)
  rows.append(("PRD (20 clusters, 10 runs)", seconds, f"F8 {f8:.3f} F1/8 {f1_8:.3f}"))
  evaluation = evaluators.make_evaluation(exp)
  evaluation(state, key=jax.random.PRNGKey(0))  # compile
  (report, _), seconds = timed(lambda: evaluation(state, key=jax.random.PRNGKey(0)))
  bpd = f", {report['bits_per_dim']:.3f} bits/dim" if "bits_per_dim" in report else ""
  rows.append((f"whole evaluation ({n} samples, cached references, compiled)", seconds, f"FID {report['fid']:.3f}{bpd}"))

  print(f"{config.data.name}, {jax.devices()[0].platform}, eval batch {e.batch_size}\n")
  print("| part | seconds | |\n|---|---:|---|")
  for name, seconds, note in rows:
    print(f"| {name} | {seconds:.2f} | {note} |")


if __name__ == "__main__":
  main()
