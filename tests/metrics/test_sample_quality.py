"""Tests for FID, IS, k-NN precision/recall and PRD (bdbounds.metrics.sample_quality,
precision_recall and prd)."""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from bdbounds.metrics import (
  feature_statistics,
  frechet_distance,
  inception_score,
  kmeans,
  precision_recall_knn,
  prd_curve,
  prd_f_beta,
  prd_from_histograms,
  prd_scores,
)


def random_gaussian(rng, dim):
  mu = rng.standard_normal(dim)
  a = rng.standard_normal((dim, dim))
  return mu, a @ a.T + 0.1 * np.eye(dim)


def mixture(rng, centres, n_per_mode, std=1.0):
  """Equal counts from isotropic Gaussians at ``centres`` (rows)."""
  dim = centres.shape[1]
  return np.concatenate([c + std * rng.standard_normal((n_per_mode, dim)) for c in centres])


# ---------------------------------------------------------------------------
# Feature statistics and Fréchet distance


def test_feature_statistics_matches_numpy():
  # More rows than two accumulation blocks of 4096, so the blocked sums run over several
  # blocks, the last one short.
  x = np.random.default_rng(0).standard_normal((2 * 4096 + 123, 4)).astype(np.float32) + 3.0
  mu, sigma = feature_statistics(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_feature_statistics_one_feature_and_bad_shapes():
  mu, sigma = feature_statistics(np.array([[1.0], [3.0]]))
  assert mu.shape == (1,) and sigma.shape == (1, 1)
  np.testing.assert_allclose(sigma, [[2.0]])
  with pytest.raises(ValueError, match=r"shape \[N, F\]"):
    feature_statistics(np.zeros(5))
  with pytest.raises(ValueError, match="at least 2 rows"):
    feature_statistics(np.zeros((1, 3)))


@pytest.mark.parametrize("dim", [3, 5, 8])
def test_frechet_matches_sqrtm_formula(dim):
  rng = np.random.default_rng(dim)
  mu1, s1 = random_gaussian(rng, dim)
  mu2, s2 = random_gaussian(rng, dim)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean)
  assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
  mu, sigma = feature_statistics(x)
  assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6 * np.trace(sigma))
  # Fewer samples than features: a singular covariance is fine too.
  mu, sigma = feature_statistics(rng.standard_normal((5, 10)))
  assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6 * np.trace(sigma))


def test_frechet_is_symmetric():
  rng = np.random.default_rng(2)
  mu1, s1 = random_gaussian(rng, 7)
  mu2, s2 = random_gaussian(rng, 7)
  d12 = frechet_distance(mu1, s1, mu2, s2)
  assert d12 > 1.0
  assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(d12, rel=1e-10)


def test_frechet_translation_gives_squared_norm():
  rng = np.random.default_rng(3)
  mu, sigma = random_gaussian(rng, 6)
  v = rng.standard_normal(6)
  assert frechet_distance(mu, sigma, mu + v, sigma) == pytest.approx(float(v @ v), rel=1e-8)


def test_frechet_diagonal_closed_form():
  # Commuting covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum_i (s1_i - s2_i)^2.
  s1 = np.array([0.5, 1.0, 2.0, 3.0])
  s2 = np.array([1.5, 1.0, 0.25, 4.0])
  mu1 = np.array([0.0, 1.0, -1.0, 2.0])
  mu2 = np.array([1.0, 1.0, 1.0, 0.0])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  got = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
  assert got == pytest.approx(expected, rel=1e-12)
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
  assert frechet_distance([1.0], [[4.0]], [0.0], [[9.0]]) == pytest.approx(2.0, rel=1e-12)


def test_frechet_rejects_mismatched_shapes():
  mu, sigma = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match="means differ in shape"):
    frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r"sigma2 must have shape \(3, 3\)"):
    frechet_distance(mu, sigma, mu, np.eye(4))
  with pytest.raises(ValueError, match="means must be vectors"):
    frechet_distance(np.zeros((3, 1)), sigma, mu, sigma)
  with pytest.raises(ValueError, match="non-finite"):
    frechet_distance(mu, np.full((3, 3), np.nan), mu, sigma)


def test_frechet_rejects_a_covariance_that_is_not_psd():
  with pytest.raises(ValueError, match="positive semi-definite"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), -2.0 * np.eye(3))


# ---------------------------------------------------------------------------
# Inception score


def reference_inception_score(logits, num_splits):
  """Direct formula on probabilities, as in the original protocol."""
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  n = len(p)
  scores = []
  for i in range(num_splits):
    part = p[i * n // num_splits : (i + 1) * n // num_splits]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_direct_formula():
  logits = 2.0 * np.random.default_rng(4).standard_normal((101, 7))
  mean, std = inception_score(logits, num_splits=3)
  ref_mean, ref_std = reference_inception_score(logits, 3)
  assert mean > 1.5
  assert mean == pytest.approx(ref_mean, rel=1e-10)
  assert std == pytest.approx(ref_std, rel=1e-8)


def test_inception_score_uniform_logits_is_one():
  mean, std = inception_score(np.zeros((100, 10)), num_splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12)
  assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_confident_balanced_classes_is_k():
  k = 5
  labels = np.tile(np.arange(k), 200)  # every split of 100 holds 20 of each class
  logits = 100.0 * np.eye(k)[labels]
  mean, std = inception_score(logits, num_splits=10)
  assert mean == pytest.approx(k, rel=1e-9)
  assert std == pytest.approx(0.0, abs=1e-9)
  # Logits this large would give log(0) through a plain softmax.
  mean, _ = inception_score(1e4 * np.eye(k)[labels], num_splits=10)
  assert mean == pytest.approx(k, rel=1e-9)


def test_inception_score_std_over_splits():
  k = 4
  confident = 50.0 * np.eye(k)[np.tile(np.arange(k), 25)]  # split score 4
  uniform = np.zeros((100, k))  # split score 1
  mean, std = inception_score(np.concatenate([confident, uniform]), num_splits=2)
  assert mean == pytest.approx(2.5, rel=1e-9)
  assert std == pytest.approx(1.5, rel=1e-9)


def test_inception_score_rejects_too_many_splits():
  with pytest.raises(ValueError, match="num_splits"):
    inception_score(np.zeros((5, 3)), num_splits=6)


# ---------------------------------------------------------------------------
# Improved precision and recall


def dense_precision_recall(real, fake, k):
  """Float64 oracle with full distance matrices."""

  def radii(x):
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]

  precision = np.mean(np.any(cdist(fake, real) <= radii(real)[None, :], axis=1))
  recall = np.mean(np.any(cdist(real, fake) <= radii(fake)[None, :], axis=1))
  return precision, recall


@pytest.mark.parametrize("k, batch_sizes", [(1, (7,)), (3, (16, 1000)), (5, (3,))])
def test_precision_recall_blocked_matches_dense(k, batch_sizes):
  rng = np.random.default_rng(5)
  real = rng.standard_normal((53, 4)) + 5.0  # off the origin: exercises the centring
  fake = 1.3 * rng.standard_normal((41, 4)) + 6.5
  expected = dense_precision_recall(real, fake, k)
  assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95  # a non-trivial case
  # Blocks that do not divide either set, one block for everything, and blocks
  # smaller than k (the running top-k then spans several blocks).
  for batch_size in batch_sizes:
    assert precision_recall_knn(real, fake, k=k, batch_size=batch_size) == pytest.approx(
      expected, abs=1e-12
    )


def test_precision_recall_identical_clouds():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((500, 8))
  assert precision_recall_knn(x, x) == (1.0, 1.0)
  # Independent samples of one distribution: k-NN balls cover most of it.
  precision, recall = precision_recall_knn(x, rng.standard_normal((500, 8)), batch_size=128)
  assert precision > 0.8 and recall > 0.8


def test_precision_recall_far_apart_clouds_are_zero():
  rng = np.random.default_rng(7)
  x = rng.standard_normal((300, 8))
  assert precision_recall_knn(x, rng.standard_normal((300, 8)) + 100.0) == (0.0, 0.0)


def test_precision_recall_mode_dropping():
  rng = np.random.default_rng(8)
  centres = 20.0 * rng.standard_normal((4, 8))
  real = mixture(rng, centres, 250)
  fake = mixture(rng, centres[:2], 500)  # only half the modes, same sample size
  precision, recall = precision_recall_knn(real, fake, batch_size=256)
  assert precision > 0.8
  # The dropped modes' real points cannot be covered, so recall <= 0.5.
  assert 0.4 < recall <= 0.5


def test_precision_recall_rejects_bad_inputs():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match="differ in dimension"):
    precision_recall_knn(x, np.zeros((10, 4)))
  with pytest.raises(ValueError, match="at least 4 rows"):
    precision_recall_knn(x, np.zeros((3, 3)), k=3)


# ---------------------------------------------------------------------------
# k-means and PRD


def test_kmeans_recovers_separated_blobs_deterministically():
  rng = np.random.default_rng(9)
  centres = 50.0 * rng.standard_normal((5, 3))
  x = mixture(rng, centres, 40)
  truth = np.repeat(np.arange(5), 40)
  found, labels = kmeans(x, 5, seed=0)
  # The partition is the truth up to a relabelling.
  assert len(set(zip(truth, labels))) == 5 and len(set(labels)) == 5
  order = [int(labels[40 * i]) for i in range(5)]
  np.testing.assert_allclose(found[order], centres, atol=0.5)
  again, labels_again = kmeans(x, 5, seed=0)
  np.testing.assert_array_equal(labels, labels_again)
  np.testing.assert_array_equal(found, again)


def test_kmeans_keeps_every_cluster_non_empty():
  # Many duplicate points: k-means++ seeds coincide and clusters empty out.
  x = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 10, axis=0)
  _, labels = kmeans(x, 6, seed=1)
  assert np.all(np.bincount(labels, minlength=6) > 0)


def test_prd_from_histograms_closed_forms():
  uniform = np.full(4, 0.25)
  precision, recall = prd_from_histograms(uniform, uniform, num_angles=1001)
  # alpha(l) = min(l, 1), beta(l) = min(1, 1/l): the curve reaches (1, 1) at l = 1.
  assert prd_f_beta(precision, recall) == pytest.approx((1.0, 1.0), abs=1e-6)
  precision, recall = prd_from_histograms([1, 1, 0, 0], [0, 0, 1, 1])
  assert np.max(precision) == 0.0 and np.max(recall) == 0.0
  # Fake on half of a uniform real support: all of fake is explained, half of real.
  precision, recall = prd_from_histograms(uniform, [0.5, 0.5, 0.0, 0.0])
  assert np.max(recall) == pytest.approx(0.5, abs=1e-9)
  assert np.max(precision) == pytest.approx(1.0, abs=1e-9)
  assert np.all(precision <= 1.0) and np.all(recall <= 1.0)


def test_prd_f_beta_values():
  # p = r = x gives F_b = x for any b.
  assert prd_f_beta([0.7], [0.7]) == pytest.approx((0.7, 0.7), abs=1e-9)
  # p = 1, r = 1/2: F_8 = 65 * 0.5 / 64.5, F_1/8 = (65 / 64) * 0.5 / (1 / 64 + 0.5).
  f8, f1_8 = prd_f_beta([1.0], [0.5])
  assert f8 == pytest.approx(32.5 / 64.5, rel=1e-9)
  assert f1_8 == pytest.approx((65 / 64) * 0.5 / (1 / 64 + 0.5), rel=1e-9)
  assert f8 < f1_8  # F_8 follows recall, F_1/8 precision


@pytest.fixture(scope="module")
def mixture_centres():
  return 10.0 * np.random.default_rng(10).standard_normal((10, 16))


def test_prd_identical_distributions(mixture_centres):
  rng = np.random.default_rng(11)
  real = mixture(rng, mixture_centres, 100)
  fake = mixture(rng, mixture_centres, 100)
  f8, f1_8 = prd_scores(real, fake)
  assert f8 > 0.95 and f1_8 > 0.95


def test_prd_disjoint_distributions(mixture_centres):
  rng = np.random.default_rng(12)
  real = mixture(rng, mixture_centres, 100)
  fake = mixture(rng, mixture_centres, 100) + 100.0
  f8, f1_8 = prd_scores(real, fake)
  assert f8 < 0.01 and f1_8 < 0.01


def test_prd_mode_dropping_hurts_recall_not_precision(mixture_centres):
  rng = np.random.default_rng(13)
  real = mixture(rng, mixture_centres, 100)
  fake = mixture(rng, mixture_centres[:5], 200)  # half the modes, same sample size
  f8, f1_8 = prd_scores(real, fake)
  assert f8 < 0.6  # recall-like: at most half of the real mass is reproduced
  assert f1_8 > 0.9  # precision-like: every fake sample is realistic


def test_prd_is_deterministic_given_seed(mixture_centres):
  rng = np.random.default_rng(14)
  real = mixture(rng, mixture_centres, 50)
  fake = mixture(rng, mixture_centres[:5], 100)
  kwargs = dict(num_runs=3, num_angles=101)
  first = prd_curve(real, fake, seed=3, **kwargs)
  second = prd_curve(real, fake, seed=3, **kwargs)
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[1], second[1])
  assert first[0].shape == (101,)


def test_prd_requires_balanced_sets():
  x = np.zeros((30, 2))
  with pytest.raises(ValueError, match="equally many"):
    prd_scores(x, np.zeros((20, 2)))
