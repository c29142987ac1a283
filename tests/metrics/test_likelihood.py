import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bdbounds import metrics


def test_bin_width_of_8_bit_images_gives_the_usual_offset():
  width = metrics.bin_width(256)
  assert width == pytest.approx(2 / 255)
  # A continuous NLL of 0 nats on 3072 dims is log(127.5)/log(2) ≈ 6.99 bits/dim of 8-bit data.
  assert float(metrics.bits_per_dim(0.0, 3072, width)) == pytest.approx(math.log(127.5) / math.log(2))
  assert float(metrics.bits_per_dim(3072 * math.log(2), 3072)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="at least 2"):
    metrics.bin_width(1)


def test_dequantisation_noise_fills_each_bin_uniformly():
  width = metrics.bin_width(17)
  x = jnp.zeros((200_000,))
  noisy = np.asarray(metrics.dequantize(x, width, key=jax.random.PRNGKey(0)))
  assert noisy.min() >= -width / 2 and noisy.max() <= width / 2
  assert np.var(noisy) == pytest.approx(width**2 / 12, rel=0.02)


@pytest.mark.parametrize("scale", [0.05, 0.3])
def test_dequantised_nll_bounds_the_discrete_nll_with_the_predicted_gap(scale):
  """E_u[−log p(x + u)] − log w ≥ −log P(x) for data on 17 levels and a Gaussian density p; the
  gap is the expected KL(uniform on the bin ‖ p restricted to the bin), computed by quadrature."""
  width = metrics.bin_width(17)
  levels = np.linspace(-1, 1, 17)
  density = stats.norm(0.1, scale)
  mass = density.cdf(1 + width / 2) - density.cdf(-1 - width / 2)
  probs = (density.cdf(levels + width / 2) - density.cdf(levels - width / 2)) / mass
  index = np.random.default_rng(0).choice(len(levels), size=200_000, p=probs)
  exact = -np.mean(np.log(probs[index]))
  y = np.asarray(metrics.dequantize(jnp.asarray(levels[index]), width, key=jax.random.PRNGKey(1)))
  bound = np.mean(-density.logpdf(y) + np.log(mass))  # p restricted to the levels' span
  gap = float(metrics.bits_per_dim(bound, 1, width)) - exact / math.log(2)

  offsets = (np.arange(4000) + 0.5) / 4000 - 0.5  # midpoint rule across one bin
  occupied = np.flatnonzero(probs > 1e-12)  # emptier bins contribute nothing at this precision
  kl = [np.mean(np.log(probs[i] / width) - density.logpdf(levels[i] + width * offsets) + np.log(mass))
        for i in occupied]
  predicted = np.sum(probs[occupied] * np.asarray(kl)) / math.log(2)
  assert predicted > 0
  assert gap == pytest.approx(predicted, abs=0.01)
