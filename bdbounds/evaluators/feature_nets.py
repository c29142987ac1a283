"""Networks that map images to features and class logits for FID, IS and precision/recall.

* `inception`: the FID Inception-v3 from a local weights file (the network behind published
  FID numbers); nothing is downloaded.
* `digits_classifier`: a small CNN trained here, in seconds, on the digits training split.
  It makes the whole metric path runnable offline on a CPU; its numbers compare runs with
  each other, not with published FIDs.

A `FeatureNet` carries a fingerprint of its weights, so that cached reference statistics
are only reused with the network that computed them.
"""

import functools
import hashlib
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bdbounds import writers
from bdbounds.evaluators.common import batched

FEATURE_NETS = ("inception", "digits_classifier")


class FeatureNet(NamedTuple):
  name: str
  fingerprint: str   # hash of the weights (part of every cache file name)
  features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # images in [-1, 1] -> (features, logits)
  info: dict         # numbers worth reporting about the network itself


def _fingerprint(params) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def inception_net(weights_path: str, batch_size: int) -> FeatureNet:
  """The FID Inception from `weights_path` (a .npz written by bdbounds.tools.convert_fid_inception)."""
  from bdbounds.evaluators import inception_weights
  from bdbounds.models import inception
  variables = inception_weights.load_inception_variables(os.path.expanduser(weights_path))
  features = inception.make_inception_fn(variables, batch_size)
  return FeatureNet("inception", _fingerprint(variables), features, {})


@functools.lru_cache(maxsize=3)
def digits_classifier_net(image_size: int, batch_size: int, *, seed: int = 0, num_steps: int = 300) -> FeatureNet:
  """A small CNN trained on the digits training split (deterministic given `seed`)."""
  from bdbounds.data.images import digits_labelled
  from bdbounds.models.classifier import SmallClassifier
  train_x, train_y, test_x, test_y = digits_labelled(image_size)
  images, labels = jnp.asarray(train_x), jnp.asarray(train_y)
  model = SmallClassifier()
  params = model.init_params(jax.random.PRNGKey(seed), train_x.shape[1:])
  optimizer = optax.adam(1e-3)

  @jax.jit
  def train_step(params, opt_state, idx):
    def loss_fn(p):
      _, logits = model.apply({"params": p}, images[idx])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(num_steps):
    params, opt_state = train_step(params, opt_state, rng.integers(0, len(train_x), 128))
  features = batched(lambda x: model.apply({"params": params}, x), batch_size)
  accuracy = float(np.mean(np.argmax(features(test_x)[1], axis=1) == test_y))
  return FeatureNet("digits_classifier", _fingerprint(params), features, {"test_accuracy": accuracy})


def check_reference_split(split: str) -> None:
  if split not in ("train", "test"):
    raise ValueError(f"eval.fid_reference={split!r}; choose train or test")


def default_stats_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bdbounds")


def reference_features(net: FeatureNet, dataset, split: str, num_examples: int, num_kept: int,
                       stats_dir: str | None = None, chunk_size: int = 2_000) -> dict:
  """Feature mean and covariance of the first `num_examples` images of `split`, and the first
  `num_kept` features themselves (for precision/recall), computed once and cached as .npz.

  The cache file name holds the data set, image shape, split, counts and the network's
  fingerprint, so a different network or protocol never reuses stale statistics.
  """
  from bdbounds.metrics import feature_statistics  # metrics imports no networks; keep it one-way
  check_reference_split(split)
  available = dataset.num_train if split == "train" else dataset.num_test
  n = min(num_examples, available)
  kept = min(num_kept, n)
  shape = "x".join(map(str, dataset.image_shape))
  path = os.path.join(stats_dir or default_stats_dir(),
                      f"{dataset.name}-{shape}-{split}-{n}-{kept}-{net.name}-{net.fingerprint}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  read = dataset.read_train if split == "train" else dataset.read_test
  features = np.concatenate([net.features(read(np.arange(s, min(s + chunk_size, n))))[0]
                             for s in range(0, n, chunk_size)])
  mu, sigma = feature_statistics(features)
  stats = {"mu": mu, "sigma": sigma, "features": features[:kept], "num_examples": np.asarray(n)}
  writers.write_npz(path, stats)  # whole or not at all: a killed run leaves no half file
  return stats
