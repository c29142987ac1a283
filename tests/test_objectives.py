"""The losses' signs, weights and reductions against closed forms.

A Gaussian EBM `E_θ(x) = θ‖x‖²/2` (so `p_θ = N(0, I/θ)`, `log Z = (D/2) log(2π/θ)`) and an
affine generator `G(z) = a z + b` (so `q = N(b, a² I)`), on latents standardised to sample mean 0
and variance 1, where every batch mean below is exact: `E_q‖x‖² = D a² + ‖b‖²`,
`H(q) = (D/2) log(2πe) + D log|a|`. At `a = θ^{-1/2}`, `b = 0` the generator is the model.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import objectives
from configs import base

D, B = 3, 64
THETA = 2.0


def bound_settings(**overrides) -> objectives.BoundSettings:
  """configs/base.py's bound settings (the one source of defaults), with `overrides`."""
  names = {f.name for f in dataclasses.fields(objectives.BoundSettings)}
  values = {k: v for k, v in base.get_config().bounds.items() if k in names}
  values.update(lower="jacobian_exact", upper="none", weight_schedule="constant", importance_weighting=False,
                defensive_samples=0)
  values.update(overrides)
  return objectives.BoundSettings(**values)


NETS = objectives.Networks(
    energy=lambda p, x: 0.5 * p["theta"] * jnp.sum(jnp.square(x)),
    time_energy=lambda p, x, t: 0.5 * p["theta"] * (1.0 + t) * jnp.sum(jnp.square(x)),
    generator=lambda p, z: p["a"] * z + p["b"],
    sigma=lambda p: p["sigma"],
    critic=lambda p, x, z: p["w"] * jnp.sum(x * z))


def game(**overrides) -> objectives.Objectives:
  return objectives.make_objectives(bound_settings(**overrides), NETS)


def energy_params(theta=THETA):
  return {"theta": jnp.asarray(theta)}


def generator_params(a=THETA ** -0.5, b=0.0, sigma=0.1):
  return {"a": jnp.asarray(a), "b": jnp.full((D,), b), "sigma": jnp.asarray(sigma)}


def standard_latents(seed=0, n=B):
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, D)), np.float64)
  return jnp.asarray((z - z.mean(0)) / z.std(0))


def data(seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, D)) * 0.8


def exact_nll_and_gradient(x, theta=THETA):
  """`E_data[E_θ] + log Z(θ)` and its θ-derivative `E_data‖x‖²/2 − D/(2θ)`."""
  half_sq = 0.5 * float(jnp.mean(jnp.sum(jnp.square(x), axis=1)))
  return theta * half_sq + 0.5 * D * np.log(2 * np.pi / theta), half_sq - 0.5 * D / theta


KEY = jax.random.PRNGKey(7)


def test_plain_energy_loss_is_the_data_minus_sample_energy_and_its_gradient_the_exact_one_at_q_equal_p(x64):
  g, x, z = game(), data(), standard_latents()
  for a, b in ((THETA ** -0.5, 0.0), (0.9, 0.3)):
    loss_fn = lambda p: g.energy_loss(p, generator_params(a, b), x, z, 0, KEY)
    (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(energy_params())
    half_sq_data = 0.5 * float(jnp.mean(jnp.sum(x**2, axis=1)))
    half_sq_fake = 0.5 * (D * a**2 + D * b**2)
    np.testing.assert_allclose(loss, THETA * (half_sq_data - half_sq_fake), rtol=1e-10)
    np.testing.assert_allclose(grad["theta"], half_sq_data - half_sq_fake, rtol=1e-10)
    np.testing.assert_allclose(terms["energy_fake"], THETA * half_sq_fake, rtol=1e-10)
    assert terms["ess"] == 1.0 and terms["penalty"] == 0.0
  # With the generator at the model, the sample term's gradient is log Z's: ∂θ log Z = −E_p[‖x‖²/2].
  np.testing.assert_allclose(jax.grad(lambda p: g.energy_loss(p, generator_params(), x, z, 0, KEY)[0])(
      energy_params())["theta"], exact_nll_and_gradient(x)[1], rtol=1e-10)


def test_importance_energy_loss_is_the_exact_nll_where_the_generator_is_the_model(x64):
  g, x, z = game(importance_weighting=True), data(), standard_latents()
  loss_fn = lambda p: g.energy_loss(p, generator_params(), x, z, 0, KEY)
  (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(energy_params())
  nll, nll_grad = exact_nll_and_gradient(x)
  np.testing.assert_allclose(loss, nll, rtol=1e-10)  # every weight exp(−E)/q equals Z
  np.testing.assert_allclose(grad["theta"], nll_grad, rtol=1e-10)
  np.testing.assert_allclose(terms["ess"], 1.0, rtol=1e-10)
  # Elsewhere the weights are uneven: fewer effective samples, and log Ẑ moves off log Z.
  (loss_off, terms_off) = g.energy_loss(energy_params(), generator_params(0.9, 0.3), x, z, 0, KEY)
  assert terms_off["ess"] < 0.99 and abs(float(loss_off) - nll) > 1e-3


def test_generator_loss_is_sample_energy_minus_entropy_and_is_minimised_at_the_model(x64):
  for lower in ("jacobian_exact", "jacobian"):  # for an isotropic G the singular-value bound is exact
    g = game(lower=lower, jacobian_method="dense", entropy_weight=1.0)
    z = standard_latents()
    for a, b in ((0.9, 0.3), (THETA ** -0.5, 0.0)):
      loss_fn = lambda p: g.generator_loss(p, energy_params(), None, z, KEY)
      (loss, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(generator_params(a, b))
      entropy = 0.5 * D * np.log(2 * np.pi * np.e) + D * np.log(a)
      np.testing.assert_allclose(terms["entropy"], entropy, rtol=1e-10, err_msg=lower)
      np.testing.assert_allclose(loss, 0.5 * THETA * D * (a**2 + b**2) - entropy, rtol=1e-10, err_msg=lower)
      np.testing.assert_allclose(grad["a"], THETA * D * a - D / a, rtol=1e-8, atol=1e-12, err_msg=lower)
      np.testing.assert_allclose(grad["b"], THETA * np.full(D, b), atol=1e-10, err_msg=lower)
  # The entropy weight scales only the entropy's pull.
  g2 = game(entropy_weight=2.0)
  grad = jax.grad(lambda p: g2.generator_loss(p, energy_params(), None, z, KEY)[0])(generator_params(0.9))
  np.testing.assert_allclose(grad["a"], THETA * D * 0.9 - 2.0 * D / 0.9, rtol=1e-8)


def test_nll_lower_bound_is_the_nll_at_the_model_and_below_it_elsewhere(x64):
  g, x, z = game(), data(), standard_latents()
  nll, _ = exact_nll_and_gradient(x)
  for (a, b), tight in (((THETA ** -0.5, 0.0), True), ((0.9, 0.3), False), ((0.4, 0.0), False)):
    bound = g.entropy_bound(generator_params(a, b), None, z, KEY)
    energies = lambda x: jax.vmap(lambda x: NETS.energy(energy_params(), x))(x)
    terms = {"energy_data": jnp.mean(energies(x)), "energy_fake": jnp.mean(energies(bound.x)),
             "entropy": bound.value}
    lower = float(objectives.nll_lower_bound(terms))
    if tight:
      np.testing.assert_allclose(lower, nll, rtol=1e-10)
    else:
      assert lower < nll - 1e-3, (a, b, lower, nll)


@pytest.mark.parametrize("schedule", ["constant", "adaptive"])
def test_the_upper_penalty_enters_the_energy_loss_with_its_weight_and_hinge(schedule, x64):
  x, z, step = data(), standard_latents(), 100
  plain = game(upper="none", weight_schedule=schedule)
  r1 = game(upper="r1", weight_schedule=schedule, upper_weight=0.3, adaptive_weight_scale=2.0,
            adaptive_weight_offset=10.0, adaptive_weight_power=0.5)
  weight = 0.3 if schedule == "constant" else 2.0 * (10.0 + step) ** -0.5
  np.testing.assert_allclose(r1.upper_weight(step), weight, rtol=1e-6)
  penalty = THETA**2 * float(jnp.mean(jnp.sum(x**2, axis=1)))  # ‖∇E‖² = θ²‖x‖² on the data
  base_loss, _ = plain.energy_loss(energy_params(), generator_params(), x, z, step, KEY)
  loss, terms = r1.energy_loss(energy_params(), generator_params(), x, z, step, KEY)
  np.testing.assert_allclose(terms["penalty"], penalty, rtol=1e-10)
  np.testing.assert_allclose(loss - base_loss, weight * penalty, rtol=1e-6)
  # Hinged: relu(λ·penalty − τ), off below the threshold.
  for tau in (0.5 * weight * penalty, 2.0 * weight * penalty):
    hinged = dataclasses.replace(r1.settings, hinge=tau)
    loss_h, _ = objectives.make_objectives(hinged, NETS).energy_loss(energy_params(), generator_params(), x, z,
                                                                      step, KEY)
    np.testing.assert_allclose(loss_h - base_loss, max(weight * penalty - tau, 0.0), rtol=1e-6, atol=1e-12)


def test_latent_fisher_vanishes_where_the_generator_is_the_model_and_grows_away_from_it(x64):
  g, x, z = game(upper="latent_fisher", num_probes=4), data(), standard_latents()
  fake = jax.vmap(lambda z: NETS.generator(generator_params(), z))(z)
  at_model = g.upper_penalties(energy_params(), generator_params(), x, fake, z, KEY)
  assert at_model.shape == (B,)
  np.testing.assert_allclose(at_model, 0.0, atol=1e-20)
  # A sharper model (a²θ > 1): the penalty is positive and grows with θ, so the energy is pulled back.
  penalty = lambda p: g.upper_penalty(p, generator_params(), x, fake, z, KEY)
  value, grad = jax.value_and_grad(penalty)(energy_params(2 * THETA))
  assert value > 0 and grad["theta"] > 0


@pytest.mark.parametrize("estimator, value_at_zero", [("dv", 0.0), ("nwj", -np.exp(-1.0)), ("infonce", 0.0)])
def test_mutual_information_bound_signs(estimator, value_at_zero, x64):
  g, z = game(lower="mutual_info", mi_estimator=estimator), standard_latents()
  conditional = 0.5 * D * np.log(2 * np.pi * np.e * 0.1**2)  # H(x | z) of x = G(z) + 0.1 ε
  zero_critic = {"w": jnp.asarray(0.0)}
  bound = g.entropy_bound(generator_params(), zero_critic, z, KEY)
  assert bound.per_example is None  # a batch estimator
  np.testing.assert_allclose(bound.value, value_at_zero + conditional, rtol=1e-10)
  loss, terms = g.critic_loss(zero_critic, generator_params(), z, KEY)
  np.testing.assert_allclose(loss, -value_at_zero, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(terms["mi_bound"], -loss, rtol=1e-10)
  # x and z are strongly dependent: a critic aligned with x·z raises the bound, so the critic's loss
  # falls along w, and the generator's loss (which subtracts the entropy bound) falls with it.
  critic_grad = jax.grad(lambda c: g.critic_loss(c, generator_params(), z, KEY)[0])(zero_critic)
  assert critic_grad["w"] < 0
  generator_loss = lambda c: g.generator_loss(generator_params(), energy_params(), c, z, KEY)[0]
  assert jax.grad(generator_loss)(zero_critic)["w"] < 0


def test_barber_agakov_takes_the_critic_as_log_r_and_gives_per_example_terms(x64):
  g, z = game(lower="mutual_info", mi_estimator="barber_agakov"), standard_latents()
  conditional = 0.5 * D * np.log(2 * np.pi * np.e * 0.1**2)  # H(x | z) of x = G(z) + 0.1 ε
  latent = 0.5 * D * np.log(2 * np.pi * np.e)                  # H(z) of N(0, I_D)
  critic = {"w": jnp.asarray(0.5)}
  bound = g.entropy_bound(generator_params(), critic, z, KEY)
  # Per example H(z) + log r(z_i | x_i) + H(x | z), with the critic's value as log r.
  expected = latent + 0.5 * jnp.sum(bound.x * z, axis=1) + conditional
  np.testing.assert_allclose(bound.per_example, expected, rtol=1e-10)
  np.testing.assert_allclose(bound.value, jnp.mean(expected), rtol=1e-10)
  loss, terms = g.critic_loss(critic, generator_params(), z, KEY)
  np.testing.assert_allclose(terms["mi_bound"], -loss, rtol=1e-10)
  # x·z > 0 on average, so raising w raises E log r: the encoder's loss falls along w.
  assert jax.grad(lambda c: g.critic_loss(c, generator_params(), z, KEY)[0])(critic)["w"] < 0


def test_per_example_terms_average_to_the_batch_values(x64):
  x, z = data(), standard_latents()
  fake = jax.vmap(lambda z: NETS.generator(generator_params(0.9, 0.3), z))(z)
  bound = game(lower="jacobian").entropy_bound(generator_params(0.9, 0.3), None, z, KEY)
  assert bound.per_example.shape == (B,)
  np.testing.assert_allclose(jnp.mean(bound.per_example), bound.value, rtol=1e-12)
  for upper in objectives.UPPER_BOUNDS:
    g = game(upper=upper)
    values = g.upper_penalties(energy_params(), generator_params(0.9, 0.3), x, fake, z, KEY)
    assert values.shape == (B,), upper
    np.testing.assert_allclose(jnp.mean(values), g.upper_penalty(energy_params(), generator_params(0.9, 0.3), x,
                                                                 fake, z, KEY), rtol=1e-12, err_msg=upper)


@pytest.mark.parametrize("field, value", [("lower", "jacobain"), ("upper", "gp"), ("mi_estimator", "mine"),
                                          ("weight_schedule", "cosine"), ("jacobian_method", "svd")])
def test_an_unknown_name_fails_when_the_settings_are_made(field, value):
  with pytest.raises(ValueError, match=f"bounds.{field}={value!r} is not one of"):
    bound_settings(**{field: value})
