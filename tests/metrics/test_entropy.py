"""The noisy generator's entropy by grid quadrature, against the Gaussian closed form."""

import math

import numpy as np
import pytest

from bdbounds import metrics

A = np.array([[1.0, 0.3], [-0.2, 0.5]])
B = np.array([0.5, -1.0])


def gaussian_entropy(cov):
  return 0.5 * np.linalg.slogdet(2 * np.pi * np.e * np.asarray(cov))[1]


def test_quadrature_entropy_of_a_linear_generator_matches_the_gaussian_closed_form():
  # G(z) = A z + b, z ~ N(0, I): q = N(b, AAᵀ + σ²I). Gauss–Hermite nodes in z make the mixture
  # deterministic, so only the x-quadrature is tested.
  sigma = 0.3
  nodes, weights = np.polynomial.hermite_e.hermegauss(60)
  z = np.stack(np.meshgrid(nodes, nodes), -1).reshape(-1, 2)
  grid = metrics.noisy_generator_entropy(z @ A.T + B, sigma, weights=np.outer(weights, weights).ravel())
  exact = gaussian_entropy(A @ A.T + sigma**2 * np.eye(2))
  assert grid.entropy == pytest.approx(exact, abs=1e-5)
  assert grid.mass == pytest.approx(1.0, abs=1e-9)
  assert grid.quadrature_error < 1e-6 and math.isnan(grid.sampling_error)
  assert grid.cell == pytest.approx(sigma / 2)

  # Coarse cells: the estimate from half the resolution still covers the actual error.
  coarse = metrics.noisy_generator_entropy(z @ A.T + B, sigma, weights=np.outer(weights, weights).ravel(),
                                           cells_per_sigma=0.4)
  assert abs(coarse.entropy - exact) > 1e-5
  assert abs(coarse.entropy - exact) < coarse.quadrature_error


def test_quadrature_entropy_from_sampled_means_and_its_low_bias_at_small_sigma():
  rng = np.random.default_rng(0)
  z = rng.standard_normal((20_000, 2))
  grid = metrics.noisy_generator_entropy(z @ A.T + B, 0.3)
  exact = gaussian_entropy(A @ A.T + 0.09 * np.eye(2))
  assert grid.entropy == pytest.approx(exact, abs=0.03)
  assert 0 < grid.sampling_error < 0.03

  # σ small against the means' spacing: the plug-in mixture's entropy is biased low (concavity),
  # and the half-sample estimate says so.
  z = rng.standard_normal((4_000, 2))
  small = metrics.noisy_generator_entropy(z @ A.T + B, 0.02)
  exact = gaussian_entropy(A @ A.T + 0.02**2 * np.eye(2))
  assert small.entropy < exact - 0.1 and small.sampling_error > 0.1

  with pytest.raises(ValueError, match="shape"):
    metrics.noisy_generator_entropy(np.zeros((5, 3)), 0.1)
  with pytest.raises(ValueError, match="sigma"):
    metrics.noisy_generator_entropy(np.zeros((5, 2)), 0.0)
