"""PRD: precision and recall for distributions, from k-means histograms of features.

Sajjadi et al. 2018, "Assessing Generative Models via Precision and Recall":
k-means histograms of both sets, the curve ``alpha(l) = sum min(l p_real,
p_fake)``, ``beta(l) = alpha(l) / l`` over slopes ``l``, summarised by the
maxima of ``F_8`` (recall-like) and ``F_{1/8}`` (precision-like) along the
curve.

Conventions: features are ``[N, F]`` arrays, one row per sample (see
:mod:`bdbounds.metrics.features`); clustering and histograms are NumPy on the
host.
"""

from __future__ import annotations

import math

import numpy as np

from bdbounds.metrics.features import as_features, check_same_dimension

__all__ = [
  "kmeans",
  "prd_curve",
  "prd_f_beta",
  "prd_from_histograms",
  "prd_scores",
]


def kmeans(
  features, num_clusters: int, *, seed=0, max_iters: int = 100
) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding; deterministic given ``seed``.

  Iterates until no assignment changes (a fixed point of Lloyd's map) or
  ``max_iters`` updates.  A cluster that empties is re-seeded with the point
  farthest from its own centre (taken from a cluster of two or more), so
  exactly ``num_clusters`` non-empty clusters survive.

  Args:
   features: ``[N, F]`` points, ``N >= num_clusters``.
   num_clusters: number of centres.
   seed: anything ``np.random.default_rng`` accepts (int, SeedSequence);
    drives the k-means++ draws.
   max_iters: cap on Lloyd updates.

  Returns:
   ``(centres [num_clusters, F] float64, labels [N] int)``.
  """
  x = as_features(features, "features")
  n = x.shape[0]
  num_clusters = int(num_clusters)
  if not 1 <= num_clusters <= n:
    raise ValueError(f"num_clusters must be in [1, N={n}], got {num_clusters}")
  if max_iters < 1:
    raise ValueError(f"max_iters must be positive, got {max_iters}")
  # float32 input stays float32 (half the memory and time); centring first
  # keeps |x|^2 - 2 x.c + |c|^2 accurate.
  dtype = np.result_type(x.dtype, np.float32)
  shift = x.mean(axis=0, dtype=np.float64)
  x = (x - shift).astype(dtype)
  x2 = np.einsum("nf,nf->n", x, x, dtype=np.float64)
  rng = np.random.default_rng(seed)

  def sq_dists(centres: np.ndarray) -> np.ndarray:
    c = centres.astype(dtype)
    d2 = x2[:, None] - 2.0 * (x @ c.T) + np.einsum("kf,kf->k", c, c, dtype=np.float64)
    return np.maximum(d2, 0.0)

  # k-means++: each new centre drawn with probability proportional to D(x)^2.
  centres = np.empty((num_clusters, x.shape[1]), dtype=np.float64)
  centres[0] = x[rng.integers(n)]
  closest = sq_dists(centres[:1])[:, 0]
  for j in range(1, num_clusters):
    total = closest.sum()
    idx = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
    centres[j] = x[idx]
    closest = np.minimum(closest, sq_dists(centres[j : j + 1])[:, 0])

  labels = np.full((n,), -1, dtype=np.int64)
  for _ in range(max_iters):
    d2 = sq_dists(centres)
    new_labels = np.argmin(d2, axis=1)
    if np.array_equal(new_labels, labels):
      break
    labels = new_labels
    counts = np.bincount(labels, minlength=num_clusters)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
      own = d2[np.arange(n), labels]
      for j in empty:
        # Take the worst-fitted point from a cluster that keeps at least one other.
        far = int(np.argmax(np.where(counts[labels] > 1, own, -1.0)))
        counts[labels[far]] -= 1
        labels[far], counts[j] = j, 1
    sums = np.stack([x[labels == j].sum(axis=0, dtype=np.float64) for j in range(num_clusters)])
    centres = sums / counts[:, None]
  return centres + shift, labels


def prd_from_histograms(
  real_hist, fake_hist, num_angles: int = 1001, epsilon: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
  """PRD curve of two histograms over the same bins.

  For slopes ``l = tan(a)``, ``a`` on ``num_angles`` equally spaced angles in
  ``[epsilon, pi/2 - epsilon]``:

   precision alpha(l) = sum_i min(l p_real_i, p_fake_i),
   recall    beta(l)  = sum_i min(p_real_i, p_fake_i / l) = alpha(l) / l.

  ``(alpha, beta)`` traces the boundary of all pairs such that ``p_fake``
  and ``p_real`` share a component of mass ``alpha`` of ``p_fake`` and
  ``beta`` of ``p_real``.  Histograms are normalised here; values are clipped
  to ``[0, 1]`` against round-off.
  """
  p_real = np.asarray(real_hist, dtype=np.float64).reshape(-1)
  p_fake = np.asarray(fake_hist, dtype=np.float64).reshape(-1)
  if p_real.shape != p_fake.shape:
    raise ValueError(f"histograms differ in shape: {p_real.shape} vs {p_fake.shape}")
  for name, p in (("real_hist", p_real), ("fake_hist", p_fake)):
    if not (np.all(np.isfinite(p)) and np.all(p >= 0) and p.sum() > 0):
      raise ValueError(f"{name} must be finite, non-negative and not all zero")
  if num_angles < 2:
    raise ValueError(f"num_angles must be at least 2, got {num_angles}")
  p_real = p_real / p_real.sum()
  p_fake = p_fake / p_fake.sum()
  slopes = np.tan(np.linspace(epsilon, math.pi / 2 - epsilon, num_angles))[:, None]
  precision = np.minimum(slopes * p_real, p_fake).sum(axis=1)
  recall = np.minimum(p_real, p_fake / slopes).sum(axis=1)
  return np.clip(precision, 0.0, 1.0), np.clip(recall, 0.0, 1.0)


def prd_curve(
  real_features,
  fake_features,
  *,
  num_clusters: int = 20,
  num_angles: int = 1001,
  num_runs: int = 10,
  seed: int = 0,
  enforce_balance: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """PRD curve of Sajjadi et al. (2018) from features, averaged over k-means runs.

  Each run clusters the union of both sets with :func:`kmeans` (its own
  seed, derived from ``seed``), histograms each set's cluster labels and
  takes :func:`prd_from_histograms`; the ``num_runs`` curves are averaged
  pointwise.  With ``enforce_balance`` the sets must be equally large, as in
  the paper: otherwise the clustering favours the bigger set.

  Returns:
   ``(precision [num_angles], recall [num_angles])``.
  """
  real = as_features(real_features, "real_features")
  fake = as_features(fake_features, "fake_features")
  check_same_dimension(real, fake)
  if enforce_balance and real.shape[0] != fake.shape[0]:
    raise ValueError(
      f"PRD needs equally many real and fake samples, got {real.shape[0]} and "
      f"{fake.shape[0]} (pass enforce_balance=False to override)"
    )
  if num_runs < 1:
    raise ValueError(f"num_runs must be positive, got {num_runs}")
  union = np.concatenate([real, fake], axis=0)
  n_real = real.shape[0]
  precisions, recalls = [], []
  for run_seed in np.random.SeedSequence(seed).spawn(num_runs):
    _, labels = kmeans(union, num_clusters, seed=run_seed)
    real_hist = np.bincount(labels[:n_real], minlength=num_clusters)
    fake_hist = np.bincount(labels[n_real:], minlength=num_clusters)
    precision, recall = prd_from_histograms(real_hist, fake_hist, num_angles)
    precisions.append(precision)
    recalls.append(recall)
  return np.mean(precisions, axis=0), np.mean(recalls, axis=0)


def prd_f_beta(precision, recall, beta: float = 8.0, epsilon: float = 1e-10) -> tuple[float, float]:
  """Maxima along a PRD curve of ``F_beta`` and ``F_{1/beta}``.

  ``F_b(p, r) = (1 + b^2) p r / (b^2 p + r)`` weights recall ``b`` times as
  much as precision, so with ``beta = 8`` the first value is recall-like and
  the second precision-like.  ``epsilon`` in the denominator makes
  ``F(0, 0) = 0``.
  """
  precision = np.asarray(precision, dtype=np.float64)
  recall = np.asarray(recall, dtype=np.float64)
  if precision.shape != recall.shape or precision.ndim != 1 or precision.size == 0:
    raise ValueError(
      f"precision and recall must be equal-length non-empty vectors, got "
      f"{precision.shape} and {recall.shape}"
    )
  if not beta > 0:
    raise ValueError(f"beta must be positive, got {beta}")

  def f(b: float) -> float:
    return float(np.max((1 + b**2) * precision * recall / (b**2 * precision + recall + epsilon)))

  return f(beta), f(1.0 / beta)


def prd_scores(
  real_features,
  fake_features,
  *,
  num_clusters: int = 20,
  num_angles: int = 1001,
  num_runs: int = 10,
  seed: int = 0,
  beta: float = 8.0,
) -> tuple[float, float]:
  """``(F_8, F_{1/8})`` of the averaged PRD curve: (recall-like, precision-like).

  A model that drops modes has a low ``F_8``; one that puts mass where the
  data has none has a low ``F_{1/8}``.  Both lie in ``[0, 1]``.  See
  :func:`prd_curve` and :func:`prd_f_beta`.
  """
  precision, recall = prd_curve(
    real_features,
    fake_features,
    num_clusters=num_clusters,
    num_angles=num_angles,
    num_runs=num_runs,
    seed=seed,
  )
  return prd_f_beta(precision, recall, beta=beta)
