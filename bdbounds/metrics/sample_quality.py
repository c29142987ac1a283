"""Sample-quality metrics from summary statistics: the Fréchet distance (FID) and the Inception score.

Everything here is pure maths on arrays the caller has already computed
(Inception pool features, classifier logits, or any other embedding); no
network is loaded and nothing is read from disk.  The k-NN precision and
recall are in :mod:`bdbounds.metrics.precision_recall`, PRD in
:mod:`bdbounds.metrics.prd`.

* Fréchet distance (FID when the features are Inception pool features;
  Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
  to a Local Nash Equilibrium"): the 2-Wasserstein distance squared between
  the Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` (Dowson & Landau 1982),
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``.
* Inception score (Salimans et al. 2016, "Improved Techniques for Training
  GANs"): ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the marginal over the
  split, averaged over splits.  Barratt & Sharma 2018, "A Note on the
  Inception Score", explain why it is only comparable under one protocol.

Conventions: features are ``[N, F]`` arrays, one row per sample (see
:mod:`bdbounds.metrics.features`).  Statistics are in float64 on the host.
"""

from __future__ import annotations

import math

import numpy as np

from bdbounds.metrics.features import as_features

__all__ = [
  "feature_statistics",
  "frechet_distance",
  "inception_score",
]

_STATS_CHUNK = 4096  # rows per float64 block when accumulating a covariance
# Relative size of a negative Fréchet distance still treated as round-off.
_FRECHET_RTOL = 1e-8


# ---------------------------------------------------------------------------
# Fréchet distance


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[F]`` and unbiased covariance ``[F, F]`` (divisor ``N - 1``) of ``[N, F]`` features.

  Float64 throughout; the covariance is accumulated over blocks of rows so a
  float32 input is never copied whole to float64.
  """
  features = as_features(features, "features", min_rows=2)
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
  logits = as_features(logits, "logits")
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
