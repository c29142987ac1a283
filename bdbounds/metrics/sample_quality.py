"""Sample-quality metrics on feature embeddings: FID, IS, k-NN precision/recall, PRD.

Everything here is pure maths on arrays the caller has already computed
(Inception pool features, classifier logits, or any other embedding); no
network is loaded and nothing is read from disk.

* Fréchet distance (FID when the features are Inception pool features;
  Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
  to a Local Nash Equilibrium"): the 2-Wasserstein distance squared between
  the Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` (Dowson & Landau 1982),
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
* Inception score (Salimans et al. 2016, "Improved Techniques for Training
  GANs"): ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the marginal over the
  split, averaged over splits.  Barratt & Sharma 2018, "A Note on the
  Inception Score", explain why it is only comparable under one protocol.
* Improved precision and recall (Kynkäänniemi et al. 2019, "Improved
  Precision and Recall Metric for Assessing Generative Models"): each set's
  manifold is the union of balls reaching each point's k-th nearest
  neighbour; precision is the fraction of generated points inside the real
  manifold, recall the fraction of real points inside the generated one.
* PRD (Sajjadi et al. 2018, "Assessing Generative Models via Precision and
  Recall"): k-means histograms of both sets, the curve
  ``alpha(l) = sum min(l p_real, p_fake)``, ``beta(l) = alpha(l) / l`` over
  slopes ``l``, summarised by the maxima of ``F_8`` (recall-like) and
  ``F_{1/8}`` (precision-like) along the curve.

Conventions: features are ``[N, F]`` arrays, one row per sample; "real" is
the reference (data) set and "fake" the model's samples.  Statistics are in
float64 on the host; pairwise distances for the k-NN metrics run blocked in
float32 under ``jax.jit``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "feature_statistics",
  "frechet_distance",
  "inception_score",
  "kmeans",
  "prd_curve",
  "prd_f_beta",
  "prd_from_histograms",
  "prd_scores",
  "precision_recall_knn",
]

_STATS_CHUNK = 4096  # rows per float64 block when accumulating a covariance
# Relative size of a negative Fréchet distance still treated as round-off.
_FRECHET_RTOL = 1e-8


def _as_features(features, name: str, min_rows: int = 1) -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"{name} must have shape [N, F], got {features.shape}")
  if features.shape[0] < min_rows:
    raise ValueError(f"{name} needs at least {min_rows} rows, got {features.shape[0]}")
  if not np.issubdtype(features.dtype, np.number):
    raise ValueError(f"{name} must be numeric, got dtype {features.dtype}")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} contains non-finite values")
  return features


def _check_pair(real: np.ndarray, fake: np.ndarray) -> None:
  if real.shape[1] != fake.shape[1]:
    raise ValueError(
      f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}"
    )


# ---------------------------------------------------------------------------
# Fréchet distance


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[F]`` and unbiased covariance ``[F, F]`` (divisor ``N - 1``) of ``[N, F]`` features.

  Float64 throughout; the covariance is accumulated over blocks of rows so a
  float32 input is never copied whole to float64.
  """
  features = _as_features(features, "features", min_rows=2)
  n, f = features.shape
  mu = np.zeros((f,), dtype=np.float64)
  for start in range(0, n, _STATS_CHUNK):
    mu += features[start : start + _STATS_CHUNK].sum(axis=0, dtype=np.float64)
  mu /= n
  sigma = np.zeros((f, f), dtype=np.float64)
  for start in range(0, n, _STATS_CHUNK):
    centred = features[start : start + _STATS_CHUNK].astype(np.float64) - mu
    sigma += centred.T @ centred
  sigma /= n - 1
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a PSD matrix; round-off negative eigenvalues become 0."""
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet (2-Wasserstein squared) distance between ``N(mu1, S1)`` and ``N(mu2, S2)``.

  ``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.

  ``S1 S2`` is not symmetric, but it has the same eigenvalues as the
  symmetric PSD matrix ``S1^{1/2} S2 S1^{1/2}``, so the trace of its square
  root is ``sum sqrt(eig)`` of the latter, computed with ``eigh`` (no complex
  round-off as with a general ``sqrtm``; singular covariances, e.g. from
  fewer samples than features, are fine).  Eigenvalues that round-off makes
  slightly negative are set to 0.  The result is ``>= 0`` for PSD inputs; a
  negative value within ``1e-8 (tr S1 + tr S2)`` is round-off and returned
  as 0, a larger one means a covariance is not PSD and raises.

  Args:
   mu1, mu2: means, shape ``[F]``.
   sigma1, sigma2: covariances, shape ``[F, F]``, symmetric PSD.

  Returns:
   The distance as a Python float (squared units of the features).
  """
  mu1 = np.asarray(mu1, dtype=np.float64)
  mu2 = np.asarray(mu2, dtype=np.float64)
  sigma1 = np.asarray(sigma1, dtype=np.float64)
  sigma2 = np.asarray(sigma2, dtype=np.float64)
  if mu1.ndim != 1 or mu2.ndim != 1:
    raise ValueError(f"means must be vectors [F], got shapes {mu1.shape} and {mu2.shape}")
  if mu1.shape != mu2.shape:
    raise ValueError(f"means differ in shape: {mu1.shape} vs {mu2.shape}")
  f = mu1.shape[0]
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.shape != (f, f):
      raise ValueError(f"{name} must have shape ({f}, {f}) to match the means, got {sigma.shape}")
  for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{name} contains non-finite values")
  # Symmetrise: covariances accumulated in float32 elsewhere may be off by round-off.
  sigma1 = 0.5 * (sigma1 + sigma1.T)
  sigma2 = 0.5 * (sigma2 + sigma2.T)
  root1 = _psd_sqrt(sigma1)
  inner = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
  tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
  diff = mu1 - mu2
  trace_sum = float(np.trace(sigma1) + np.trace(sigma2))
  value = float(diff @ diff) + trace_sum - 2.0 * tr_covmean
  if value < 0.0:
    if value < -_FRECHET_RTOL * max(trace_sum, 1e-300):
      raise ValueError(
        f"negative Fréchet distance {value:.3e} beyond round-off; "
        "are sigma1 and sigma2 positive semi-definite?"
      )
    value = 0.0
  return value


# ---------------------------------------------------------------------------
# Inception score


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits, num_splits: int = 10) -> tuple[float, float]:
  """Inception score ``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits ``[N, K]``.

  As in the usual protocol the ``N`` samples are cut into ``num_splits``
  contiguous splits (sizes differing by at most one); within each split
  ``p(y)`` is the mean of ``p(y|x)`` over the split, and the score is the
  exponential of the mean KL.  Returns the mean and the standard deviation
  (``ddof=0``) of the per-split scores.  ``1 <= IS <= K``: 1 when every
  ``p(y|x)`` equals ``p(y)`` (e.g. uniform logits), ``K`` for confident
  predictions spread evenly over ``K`` classes.  Computed in float64 from
  log-softmax, so saturated logits do not produce ``log 0``.
  """
  logits = _as_features(logits, "logits")
  n = logits.shape[0]
  num_splits = int(num_splits)
  if not 1 <= num_splits <= n:
    raise ValueError(f"num_splits must be in [1, N={n}], got {num_splits}")
  log_p = _log_softmax(logits.astype(np.float64))
  scores = []
  for i in range(num_splits):
    part = log_p[i * n // num_splits : (i + 1) * n // num_splits]
    # log p(y) = log mean_x p(y|x), kept in log space for the same reason.
    big = part.max(axis=0)
    log_py = big + np.log(np.mean(np.exp(part - big), axis=0))
    kl = np.sum(np.exp(part) * (part - log_py), axis=1)
    scores.append(math.exp(float(np.mean(kl))))
  return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------
# Improved precision and recall (k-NN manifolds)


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """``|a_i - b_j|^2`` as ``|a|^2 + |b|^2 - 2 a.b``, clipped at 0 (cancellation)."""
  # HIGHEST: the default float32 matmul may run in TF32 on GPUs, which would
  # blur distances at the ball boundaries.
  ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  a2 = jnp.sum(a * a, axis=1)
  b2 = jnp.sum(b * b, axis=1)
  return jnp.maximum(a2[:, None] + b2[None, :] - 2.0 * ab, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_nn_sq(rows, row_start, blocks, n, *, k: int):
  """Squared distance from each of ``rows`` to its k-th nearest neighbour in ``blocks``.

  ``rows`` are ``blocks`` rows ``row_start ..``; the point itself and the
  padding beyond ``n`` are excluded.  A running top-k over column blocks keeps
  memory at one ``[B, B]`` block.
  """
  size = blocks.shape[1]
  row_idx = row_start + jnp.arange(rows.shape[0])

  def body(best, inputs):
    cols, col_start = inputs
    col_idx = col_start + jnp.arange(size)
    d2 = _sq_dists(rows, cols)
    drop = (col_idx[None, :] >= n) | (col_idx[None, :] == row_idx[:, None])
    d2 = jnp.where(drop, jnp.inf, d2)
    neg, _ = jax.lax.top_k(-jnp.concatenate([best, d2], axis=1), k)
    return -neg, None

  best = jnp.full((rows.shape[0], k), jnp.inf, rows.dtype)
  starts = jnp.arange(blocks.shape[0]) * size
  best, _ = jax.lax.scan(body, best, (blocks, starts))
  return best[:, k - 1]


@jax.jit
def _inside_any(queries, blocks, radii_sq, n):
  """Whether each query lies in at least one ball ``|x - c_j|^2 <= r_j^2`` (``j < n``)."""
  size = blocks.shape[1]

  def body(inside, inputs):
    centres, r2, start = inputs
    valid = start + jnp.arange(size) < n
    hit = (_sq_dists(queries, centres) <= r2[None, :]) & valid[None, :]
    return inside | jnp.any(hit, axis=1), None

  inside = jnp.zeros((queries.shape[0],), dtype=bool)
  starts = jnp.arange(blocks.shape[0]) * size
  inside, _ = jax.lax.scan(body, inside, (blocks, radii_sq, starts))
  return inside


def _to_blocks(x: np.ndarray, size: int) -> jax.Array:
  """``[N, F] -> [ceil(N / size), size, F]`` float32, zero-padded (callers mask the padding)."""
  nb = -(-x.shape[0] // size)
  padded = np.zeros((nb * size, x.shape[1]), dtype=np.float32)
  padded[: x.shape[0]] = x
  return jnp.asarray(padded.reshape(nb, size, x.shape[1]))


def _knn_radii_sq(blocks: jax.Array, n: int, k: int) -> jax.Array:
  out = [
    _kth_nn_sq(rows, jnp.int32(i * blocks.shape[1]), blocks, jnp.int32(n), k=k)
    for i, rows in enumerate(blocks)
  ]
  return jnp.stack(out)  # [nb, size]; padding rows hold junk, masked by n downstream


def _coverage(queries: jax.Array, n_queries: int, centres: jax.Array, radii_sq, n: int) -> float:
  inside = [_inside_any(rows, centres, radii_sq, jnp.int32(n)) for rows in queries]
  inside = np.asarray(jnp.concatenate(inside))[:n_queries]
  return float(np.mean(inside))


def precision_recall_knn(
  real_features, fake_features, k: int = 3, batch_size: int = 2048
) -> tuple[float, float]:
  """Improved precision and recall of Kynkäänniemi et al. (2019).

  With ``r_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its
  own set (itself excluded), a set's manifold is ``U_x B(x, r_k(x))``:

   precision = fraction of fake points inside the real manifold,
   recall = fraction of real points inside the fake manifold.

  A point on a ball's boundary counts as inside.  Both are 1 when the two
  sets are the same points, and 0 when they are farther apart than every
  radius.  Distances are computed in ``[batch_size, batch_size]`` float32
  blocks under ``jax.jit``, after subtracting the real mean in float64 (the
  ``|a|^2 + |b|^2 - 2 a.b`` form loses accuracy far from the origin), so
  10k x 10k points of dimension 2048 never need a full distance matrix.

  Args:
   real_features: ``[N_real, F]`` reference features.
   fake_features: ``[N_fake, F]`` generated features.
   k: neighbourhood size (the paper uses 3); each set needs more than ``k`` points.
   batch_size: rows and columns per distance block.

  Returns:
   ``(precision, recall)`` as Python floats in ``[0, 1]``.
  """
  k = int(k)
  if k < 1:
    raise ValueError(f"k must be positive, got {k}")
  real = _as_features(real_features, "real_features", min_rows=k + 1)
  fake = _as_features(fake_features, "fake_features", min_rows=k + 1)
  _check_pair(real, fake)
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  shift = real.mean(axis=0, dtype=np.float64)
  n_real, n_fake = real.shape[0], fake.shape[0]
  size = int(min(batch_size, max(n_real, n_fake)))
  real_b = _to_blocks(real - shift, size)
  fake_b = _to_blocks(fake - shift, size)
  real_r2 = _knn_radii_sq(real_b, n_real, k)
  fake_r2 = _knn_radii_sq(fake_b, n_fake, k)
  precision = _coverage(fake_b, n_fake, real_b, real_r2, n_real)
  recall = _coverage(real_b, n_real, fake_b, fake_r2, n_fake)
  return precision, recall


# ---------------------------------------------------------------------------
# PRD: precision and recall for distributions


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
  x = _as_features(features, "features")
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
  real = _as_features(real_features, "real_features")
  fake = _as_features(fake_features, "fake_features")
  _check_pair(real, fake)
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
