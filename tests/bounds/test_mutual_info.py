"""MI bounds on a linear-Gaussian generator with its closed-form optimal critic and posterior."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from bdbounds import bounds

SIGMA = 0.5
BATCH = 200       # the training batch size (configs/base.py)
NUM_BATCHES = 1000


class Channel(NamedTuple):
  true_mi: float
  critic: Callable          # (x, z) -> T*(x, z) = log p(x | z) / p(x), the optimal DV / InfoNCE critic
  posterior_mean: Callable  # x -> E[z | x]
  posterior_cov: jax.Array  # Cov[z | x], the same for every x
  sample: Callable          # (key, n) -> (x, z, a permutation of z)


def linear_gaussian_channel(sigma) -> Channel:
  """x = A z + σ ε with z ~ N(0, I_2), x ∈ R³, in closed form. The critic broadcasts over leading axes."""
  a = jnp.array([[1.0, 0.3], [-0.4, 0.8], [0.2, 0.5]])
  true_mi = 0.5 * jnp.linalg.slogdet(jnp.eye(3) + a @ a.T / sigma**2)[1]
  marginal_cov = a @ a.T + sigma**2 * jnp.eye(3)
  # p(z | x) = N(Σ Aᵀx / σ², Σ) with Σ = (I + AᵀA/σ²)⁻¹.
  posterior_cov = jnp.linalg.inv(jnp.eye(2) + a.T @ a / sigma**2)
  mvn_logpdf = jax.scipy.stats.multivariate_normal.logpdf

  def critic(x, z):
    # T*(x, z) = log N(x; Az, σ²I) − log N(x; 0, AAᵀ + σ²I) = log p(x|z)/p(x).
    return mvn_logpdf(x, z @ a.T, sigma**2 * jnp.eye(3)) - mvn_logpdf(x, jnp.zeros(3), marginal_cov)

  def sample(key, n):
    kz, ke, kp = jax.random.split(key, 3)
    z = jax.random.normal(kz, (n, 2))
    x = z @ a.T + sigma * jax.random.normal(ke, (n, 3))
    return x, z, jax.random.permutation(kp, z)

  return Channel(float(true_mi), critic, lambda x: x @ a @ posterior_cov / sigma**2, posterior_cov, sample)


@pytest.fixture
def linear_gaussian(x64):
  """The channel at σ = SIGMA: the true I(x; z), the optimal critic and a sampler."""
  channel = linear_gaussian_channel(SIGMA)
  return channel.true_mi, channel.critic, channel.sample


def test_dv_and_nwj_reach_the_true_mi_with_the_optimal_critic(linear_gaussian):
  true_mi, critic, sample = linear_gaussian
  x, z, z_shuffled = sample(jax.random.PRNGKey(0), 50_000)
  t_joint, t_marg = critic(x, z), critic(x, z_shuffled)
  # Standard errors of the two estimates, from the per-sample terms.
  se = 4 * float(jnp.std(t_joint) + jnp.std(jnp.exp(t_marg))) / np.sqrt(x.shape[0])
  assert abs(bounds.dv_bound(t_joint, t_marg) - true_mi) < se
  assert abs(bounds.nwj_bound(t_joint + 1.0, t_marg + 1.0) - true_mi) < se


@pytest.mark.parametrize("scale, shift", [(0.5, 0.0), (1.5, 0.0), (1.0, 2.0)])
def test_suboptimal_critics_stay_below_the_true_mi(linear_gaussian, scale, shift):
  true_mi, critic, sample = linear_gaussian
  x, z, z_shuffled = sample(jax.random.PRNGKey(1), 50_000)
  t_joint, t_marg = scale * critic(x, z) + shift, scale * critic(x, z_shuffled) + shift
  se = 4 * float(jnp.std(t_joint) + jnp.std(jnp.exp(t_marg))) / np.sqrt(x.shape[0])
  dv, nwj = bounds.dv_bound(t_joint, t_marg), bounds.nwj_bound(t_joint, t_marg)
  assert dv < true_mi + se and nwj < true_mi + se
  assert nwj <= dv + 1e-9  # NWJ ≤ DV for any critic (log u ≤ u/e).
  if scale == 1.0:  # DV is shift-invariant; NWJ loses exactly 1 + c − e^c at T* + 1 + c.
    assert abs(dv - true_mi) < se
    c = shift - 1.0
    assert abs(nwj - (true_mi + 1 + c - np.exp(c))) < se


def test_infonce_is_below_log_k_and_the_true_mi(linear_gaussian):
  true_mi, critic, sample = linear_gaussian
  for num in (4, 64):
    x, z, _ = sample(jax.random.PRNGKey(num), num)
    scores = jax.vmap(lambda xi: jax.vmap(lambda zj: critic(xi[None], zj[None])[0])(z))(x)
    assert scores.shape == (num, num)
    assert bounds.infonce_bound(scores) <= np.log(num) + 1e-12
  # Averaged over many batches, InfoNCE with the optimal critic is below I and near it at large K.
  estimates = []
  for i in range(20):
    x, z, _ = sample(jax.random.PRNGKey(100 + i), 256)
    scores = jax.vmap(lambda xi: critic(jnp.broadcast_to(xi, (256, 3)), z))(x)
    estimates.append(float(bounds.infonce_bound(scores)))
  mean, se = np.mean(estimates), 4 * np.std(estimates) / np.sqrt(len(estimates))
  assert mean < true_mi + se and mean > true_mi - 0.2
  with pytest.raises(ValueError, match="square"):
    bounds.infonce_bound(jnp.zeros((3, 4)))


def test_jsd_estimate_peaks_at_the_log_density_ratio(linear_gaussian):
  _, critic, sample = linear_gaussian
  x, z, z_shuffled = sample(jax.random.PRNGKey(2), 50_000)
  values = {c: float(bounds.jsd_mi_estimate(c * critic(x, z), c * critic(x, z_shuffled)))
            for c in (0.6, 1.0, 1.4)}
  assert values[1.0] > values[0.6] and values[1.0] > values[1.4]


def test_mine_surrogate_value_and_corrected_gradient(x64):
  key = jax.random.PRNGKey(3)
  t_joint, t_marg = jax.random.normal(key, (2, 16)) * 2.0
  log_ema = jnp.log(3.0)
  value = bounds.mine_dv_surrogate(t_joint, t_marg, log_ema)
  np.testing.assert_allclose(value, bounds.dv_bound(t_joint, t_marg), rtol=1e-12)
  grad_joint, grad_marg = jax.grad(bounds.mine_dv_surrogate, argnums=(0, 1))(t_joint, t_marg, log_ema)
  np.testing.assert_allclose(grad_joint, np.full(16, 1 / 16), rtol=1e-12)
  np.testing.assert_allclose(grad_marg, -np.exp(t_marg) / 3.0 / 16, rtol=1e-12)
  # The moving average of mean exp T, in log space, survives values that overflow exp.
  new = bounds.update_log_ema(log_ema, t_marg, decay=0.9)
  np.testing.assert_allclose(np.exp(new), 0.9 * 3.0 + 0.1 * np.mean(np.exp(t_marg)), rtol=1e-12)
  assert np.isfinite(bounds.update_log_ema(jnp.array(800.0), t_marg + 1000.0, decay=0.9))
  assert np.isfinite(bounds.dv_bound(t_joint, t_marg + 1000.0))


@pytest.mark.parametrize("dim, sigma", [(1, 0.1), (3, 0.5), (784, 0.05)])
def test_gaussian_conditional_entropy(dim, sigma, x64):
  expected = scipy.stats.multivariate_normal(np.zeros(dim), sigma**2 * np.eye(dim)).entropy() \
      if dim < 100 else dim * scipy.stats.norm(0, sigma).entropy()
  np.testing.assert_allclose(bounds.gaussian_conditional_entropy(dim, sigma), expected, rtol=1e-10)


# --------------------------------------------------------------------------- batch size 200
# At the training batch size, with the optimal critic or encoder, averaged over many batches.

def mean_and_stderr(values):
  return float(np.mean(values)), float(np.std(values) / np.sqrt(len(values)))


def over_batches(estimate, seed):
  """`estimate(key) -> tuple of scalars` on NUM_BATCHES independent keys: an array [len(tuple), NUM_BATCHES]."""
  keys = jax.random.split(jax.random.PRNGKey(seed), NUM_BATCHES)
  return np.asarray(jax.jit(jax.vmap(estimate))(keys))


@pytest.mark.parametrize("sigma", [0.1, 0.05])
def test_at_batch_200_dv_overstates_the_mi_while_nwj_and_infonce_do_not(sigma, x64):
  channel = linear_gaussian_channel(sigma)

  def estimates(key):
    x, z, _ = channel.sample(key, BATCH)
    t_joint, t_marg = channel.critic(x, z), channel.critic(x, jnp.roll(z, 1, axis=0))  # a derangement
    scores = channel.critic(x[:, None], z[None])
    return (bounds.dv_bound(t_joint, t_marg), bounds.nwj_bound(t_joint + 1.0, t_marg + 1.0),
            bounds.infonce_bound(scores))

  dv, nwj, infonce = over_batches(estimates, seed=10)
  (dv_mean, dv_se), (nwj_mean, nwj_se) = mean_and_stderr(dv), mean_and_stderr(nwj)
  # Even with the optimal critic DV's plug-in sits above I (Jensen on the log of the marginal
  # batch mean), so a generator would climb an "entropy lower bound" above its entropy.
  assert dv_mean > channel.true_mi + 4 * dv_se
  # NWJ is linear in the two expectations: its batch mean is unbiased for the bound, here I.
  assert abs(nwj_mean - channel.true_mi) < 4 * nwj_se
  # InfoNCE is a bound at every batch size, and never above log B.
  assert np.all(infonce <= np.log(BATCH) + 1e-12) and np.mean(infonce) < channel.true_mi


@pytest.mark.parametrize("sigma", [0.1, 0.05])
def test_barber_agakov_is_the_mi_with_the_exact_posterior_and_below_it_with_any_other_encoder(sigma, x64):
  channel = linear_gaussian_channel(sigma)
  exact = channel.posterior_cov
  # r(z | x) = N(shrink · E[z | x], cov): the exact posterior, its diagonal (the GaussianEncoder's
  # family), a mean pulled towards 0, a 2× wider std, and the prior N(0, I).
  encoders = [(1.0, exact), (1.0, jnp.diag(jnp.diag(exact))), (0.95, exact), (1.0, 4 * exact), (0.0, jnp.eye(2))]

  def estimates(key):
    x, z, _ = channel.sample(key, BATCH)
    return tuple(bounds.barber_agakov_bound(jax.scipy.stats.multivariate_normal.logpdf(
        z, shrink * channel.posterior_mean(x), cov), latent_dim=2) for shrink, cov in encoders)

  for (shrink, cov), values in zip(encoders, over_batches(estimates, seed=20)):
    mean, se = mean_and_stderr(values)
    # The gap is E_x KL(p(z|x) ‖ r(z|x)); E[z|x] has covariance I − Σ since Cov z = I.
    inv = np.linalg.inv(cov)
    gap = 0.5 * (np.trace(inv @ exact) + (1 - shrink)**2 * np.trace(inv @ (np.eye(2) - exact)) - 2
                 + np.linalg.slogdet(cov)[1] - np.linalg.slogdet(exact)[1])
    assert abs(mean - (channel.true_mi - gap)) < 4 * se
    if cov is exact and shrink == 1.0:
      assert gap == pytest.approx(0.0, abs=1e-12)
    else:  # Gibbs: any other encoder loses E KL > 0 (the diagonal one only ~0.003 nats here)
      assert gap > 1e-3
      if gap > 0.1:
        assert mean < channel.true_mi - 4 * se
