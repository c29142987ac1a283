"""Image models: shapes, ranges, per-example independence, the σ clamp, time conditioning,
the upsampling modes, a Lanczos solve on a real generator and the default parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdbounds import bounds
from bdbounds.models import images

ARCHS = ["dcgan", "resnet"]
SHAPE = (8, 8, 1)    # one resampling stage: the smallest useful image
LATENT_DIM = 3
WIDTH = 4
BATCH = 3


def tiny_networks(arch, image_shape=SHAPE, **kwargs):
  return images.build_image_networks(arch, image_shape, width=WIDTH, **kwargs)


# Random numbers come from the host: XLA:CPU spends seconds compiling the threefry PRNG for
# every new shape, which would dominate these tests. `init` traces `module.init` abstractly for
# the parameter shapes (cheap) and fills them; the real initialisers are exercised by
# `test_real_initialisation`.

def inputs(image_shape=SHAPE, batch=BATCH, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, (batch, *image_shape)).astype(np.float32)
  z = rng.normal(size=(batch, LATENT_DIM)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(z)


def init(module, *args, seed=1):
  """Parameters of `module.init`'s shapes: weights N(0, 1/fan_in), biases N(0, 0.1²)."""
  rng = np.random.default_rng(seed)
  def draw(leaf):
    scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return jnp.asarray(scale * rng.normal(size=leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map(draw, jax.eval_shape(module.init, jax.random.PRNGKey(0), *args))


def num_params(params):
  return sum(p.size for p in jax.tree_util.tree_leaves(params))


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("size, stages", [(4, 0), (8, 1), (16, 2), (32, 3), (64, 4)])
def test_num_stages(size, stages):
  assert images.num_stages((size, size, 3)) == stages


@pytest.mark.parametrize("shape", [(12, 12, 3), (32, 16, 3), (2, 2, 1), (0, 0, 1), (32, 32)])
def test_bad_image_shapes_raise(shape):
  with pytest.raises(ValueError, match="image_shape"):
    images.build_image_networks("dcgan", shape)


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="architecture"):
    images.build_image_networks("vit", SHAPE)
  with pytest.raises(ValueError, match="upsampling"):
    images.build_image_networks("dcgan", SHAPE, upsample="bilinear")
  with pytest.raises(ValueError, match="nearest"):
    images.build_image_networks("resnet", SHAPE, upsample="transpose")


def test_wrong_input_shape_raises():
  nets = tiny_networks("dcgan")
  with pytest.raises(ValueError, match="trailing shape"):
    init(nets.energy, jnp.zeros((2, 16, 16, 1)))


def one_and_batch(module, params, *args):
  """`module` applied to the first example and to the whole batch (a scalar t stays shared)."""
  first = [a[0] if jnp.ndim(a) else a for a in args]
  return module.apply(params, *first), module.apply(params, *args)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_ranges(arch):
  image_shape = (16, 16, 3)  # two resampling stages, colour
  nets = tiny_networks(arch, image_shape)
  x, z = inputs(image_shape)
  params = {name: init(getattr(nets, name), *args) for name, args in
            (("generator", (z,)), ("energy", (x,)), ("time_energy", (x, 0.5)), ("critic", (x, z)))}

  @jax.jit
  def outputs(params, x, z):
    return {"generator": one_and_batch(nets.generator, params["generator"], z),
            "energy": one_and_batch(nets.energy, params["energy"], x),
            "time_energy": one_and_batch(nets.time_energy, params["time_energy"], x, 0.5),
            "critic": one_and_batch(nets.critic, params["critic"], x, z)}

  out = outputs(params, x, z)
  one, batch = out.pop("generator")
  assert one.shape == image_shape and batch.shape == (BATCH, *image_shape)
  assert jnp.all(jnp.abs(batch) < 1.0) and jnp.std(batch) > 0
  for name, (one, batch) in out.items():
    assert one.shape == () and batch.shape == (BATCH,), name
    assert jnp.all(jnp.isfinite(batch)), name


# --------------------------------------------------------------------------- per-example

@pytest.mark.parametrize("arch", ARCHS)
def test_vmap_of_one_example_equals_batched_call(arch, variant):
  nets = tiny_networks(arch)
  x, z = inputs()
  t = jnp.array([0.0, 0.3, 1.0])
  cases = {"generator": (z,), "energy": (x,), "time_energy": (x, t), "critic": (x, z)}
  params = {name: init(getattr(nets, name), *args) for name, args in cases.items()}

  @variant
  def per_example_and_batched(params):
    return {name: (jax.vmap(lambda *a: getattr(nets, name).apply(params[name], *a))(*args),
                   getattr(nets, name).apply(params[name], *args)) for name, args in cases.items()}

  for name, (per_example, batched) in per_example_and_batched(params).items():
    np.testing.assert_allclose(per_example, batched, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generator_jacobian_is_block_diagonal(arch):
  nets = tiny_networks(arch)
  _, z = inputs(batch=2)
  params = init(nets.generator, z)
  jac = jax.jit(jax.jacfwd(nets.generator.apply, argnums=1))(params, z)  # [2, H, W, C, 2, d]
  jac = jac.reshape(2, -1, 2, LATENT_DIM)
  assert jnp.all(jac[0, :, 1] == 0) and jnp.all(jac[1, :, 0] == 0)
  assert jnp.all(jnp.any(jac[0, :, 0] != 0, axis=0)) and jnp.all(jnp.any(jac[1, :, 1] != 0, axis=0))


@pytest.mark.parametrize("arch", ARCHS)
def test_energy_second_derivative_reaches_parameters(arch):
  # Score-based upper bounds differentiate ∇_x E with respect to the parameters.
  nets = tiny_networks(arch)
  x, _ = inputs()
  params = init(nets.energy, x)
  score_norm = lambda p: jnp.sum(jnp.square(jax.vmap(jax.grad(lambda x: nets.energy.apply(p, x)))(x)))
  grads = jax.jit(jax.grad(score_norm))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(jnp.all(jnp.isfinite(g)) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_energy_includes_the_confinement_term():
  x, _ = inputs()
  trunk = images.DCGANTrunk(SHAPE, width=WIDTH)
  loose, tight = images.ConvEnergy(trunk, base_std=4.0), images.ConvEnergy(trunk, base_std=0.5)
  params = init(loose, x)  # base_std is not a parameter: both modules share it
  sq_norm = jnp.sum(jnp.square(x), axis=(1, 2, 3))
  difference = jax.jit(lambda params, x: tight.apply(params, x) - loose.apply(params, x))(params, x)
  np.testing.assert_allclose(difference, sq_norm * (0.5 / 0.5**2 - 0.5 / 4.0**2), rtol=1e-5)


# --------------------------------------------------------------------------- σ and t

@pytest.mark.parametrize("arch", ARCHS)
def test_real_initialisation(arch):
  # Flax's own initialisers, jitted, with a PRNG that compiles quickly on the CPU.
  nets = tiny_networks(arch, sigma_min=0.05, sigma_max=0.3, sigma_init=0.2)
  _, z = inputs()
  params = jax.jit(nets.generator.init)(jax.random.key(0, impl="unsafe_rbg"), z)
  assert set(params["params"]) == {"decoder", "sigma_logit"}  # as the toy Generator
  np.testing.assert_allclose(nets.generator.apply(params, method="sigma"), 0.2, rtol=1e-5)
  x = jax.jit(nets.generator.apply)(params, z)
  assert jnp.all(jnp.abs(x) < 1.0) and jnp.std(x) > 0


def test_sigma_lies_in_its_clamp():
  nets = tiny_networks("dcgan", sigma_min=0.05, sigma_max=0.3, sigma_init=0.2)
  # `sigma` alone initialises only `sigma_logit`: the decoder is never called.
  params = nets.generator.init(jax.random.PRNGKey(0), method="sigma")
  np.testing.assert_allclose(nets.generator.apply(params, method="sigma"), 0.2, rtol=1e-5)
  for logit in (-1e3, 0.0, 1e3):
    params["params"]["sigma_logit"] = jnp.asarray(logit)
    assert 0.05 <= nets.generator.apply(params, method="sigma") <= 0.3


@pytest.mark.parametrize("sigma_init", [0.01, 0.5, 0.0, 1.0])
def test_sigma_init_out_of_range_raises(sigma_init):
  nets = tiny_networks("dcgan", sigma_min=0.01, sigma_max=0.5, sigma_init=sigma_init)
  with pytest.raises(ValueError, match="sigma_init"):
    nets.generator.init(jax.random.PRNGKey(0), method="sigma")


@pytest.mark.parametrize("arch", ARCHS)
def test_time_energy_takes_scalar_t_and_depends_on_it(arch):
  nets = tiny_networks(arch)
  x, _ = inputs()
  params = init(nets.time_energy, x, 0.0)

  @jax.jit
  def energies(params, x):
    at = lambda t: nets.time_energy.apply(params, x, t)
    return at(0.25), at(jnp.full((BATCH,), 0.25)), at(0.0), at(0.5), at(1.0)

  shared_t, per_example_t, at_0, at_half, at_1 = energies(params, x)
  np.testing.assert_allclose(shared_t, per_example_t, rtol=1e-6)
  assert shared_t.shape == (BATCH,)
  assert not np.allclose(at_0, at_half, atol=1e-4) and not np.allclose(at_half, at_1, atol=1e-4)


# --------------------------------------------------------------------------- upsampling

@pytest.mark.parametrize("mode", images.UPSAMPLING_MODES)
def test_every_upsampling_mode_gives_the_same_shapes(mode):
  image_shape = (16, 16, 3)
  decoder = images.DCGANDecoder(image_shape, width=WIDTH, upsample=mode)
  _, z = inputs(image_shape)
  params = init(decoder, z)
  one, batch = jax.jit(lambda params, z: one_and_batch(decoder, params, z))(params, z)
  assert one.shape == image_shape and batch.shape == (BATCH, *image_shape)
  np.testing.assert_allclose(one, batch[0], rtol=1e-5, atol=1e-6)
  assert jax.tree_util.tree_map(jnp.shape, params)["params"]["to_image"]["kernel"] == (3, 3, WIDTH, 3)


def test_depth_to_space_places_channel_groups_as_patches():
  h = jnp.arange(4.0).reshape(1, 1, 1, 4)
  np.testing.assert_array_equal(images.depth_to_space(h)[0, :, :, 0], [[0.0, 1.0], [2.0, 3.0]])


# --------------------------------------------------------------------------- Jacobian bound

def test_lanczos_on_a_dcgan_generator_matches_dense_svd(x64):
  latent_dim = 5
  nets = tiny_networks("dcgan")
  z = jnp.asarray(np.random.default_rng(2).normal(size=latent_dim))
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), init(nets.generator, z))

  @jax.jit
  def lanczos_and_dense(params, z):
    fn = lambda z: nets.generator.apply(params, z).ravel()
    result = bounds.jtj_eigs(fn, z, key=jax.random.key(3, impl="unsafe_rbg"), num_iters=latent_dim,
                             method="lanczos")
    return jnp.sqrt(result.eigvals[0]), jnp.linalg.svd(jax.jacfwd(fn)(z), compute_uv=False)[-1]

  lanczos, dense = lanczos_and_dense(params, z)
  np.testing.assert_allclose(lanczos, dense, rtol=1e-7)


# --------------------------------------------------------------------------- size

def conv_params(kernel, c_in, c_out):
  return kernel * kernel * c_in * c_out + c_out


@pytest.mark.parametrize("mode", images.UPSAMPLING_MODES)
def test_default_dcgan_parameter_count(mode):
  latent_dim, width, image_shape = 128, 64, (32, 32, 3)
  stage_channels = [8 * width, 4 * width, 2 * width, width]  # 4×4 → 8×8 → 16×16 → 32×32
  up = {"nearest": lambda c_in, c_out: conv_params(3, c_in, c_out),
        "transpose": lambda c_in, c_out: conv_params(4, c_in, c_out),
        "pixel_shuffle": lambda c_in, c_out: conv_params(3, c_in, 4 * c_out)}[mode]
  expected_generator = (latent_dim * 16 * stage_channels[0] + 16 * stage_channels[0]
                        + sum(up(c_in, c_out) for c_in, c_out in zip(stage_channels, stage_channels[1:]))
                        + conv_params(3, width, 3) + 1)  # + sigma_logit
  energy_channels = stage_channels[::-1]  # 32×32 → 16×16 → 8×8 → 4×4
  expected_energy = (conv_params(3, 3, width)
                     + sum(conv_params(4, c_in, c_out) for c_in, c_out in zip(energy_channels, energy_channels[1:]))
                     + 16 * energy_channels[-1] + 1)
  nets = images.build_image_networks("dcgan", image_shape, upsample=mode)
  z, x = jnp.zeros((latent_dim,)), jnp.zeros(image_shape)
  key = jax.random.PRNGKey(0)
  generator_count = num_params(jax.eval_shape(nets.generator.init, key, z))
  energy_count = num_params(jax.eval_shape(nets.energy.init, key, x))
  print(f"DCGAN 32×32×3, w={width}, d={latent_dim}, {mode}: generator {generator_count:,}, "
        f"energy {energy_count:,} parameters")
  assert generator_count == expected_generator
  assert energy_count == expected_energy


@pytest.mark.parametrize("kernel_size, size", [(4, 8), (3, 8), (4, 6)])
def test_patch_conv_is_the_strided_convolution(kernel_size, size, x64):
  """PatchConv has nn.Conv's parameters and initialisation, and the same function and first and second
  derivatives (what R1 differentiates: the parameters' gradient of ‖∇_x‖²) as the stride-2 SAME conv."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, 5))
  ours = images.PatchConv(7, kernel_size)
  xla = nn.Conv(7, (kernel_size, kernel_size), strides=(2, 2))
  params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)), params, xla.init(jax.random.PRNGKey(1), x)))
  np.testing.assert_allclose(ours.apply(params, x), xla.apply(params, x), rtol=1e-10, atol=1e-12)

  def r1(module):
    def penalty(p):
      grad = jax.grad(lambda x: jnp.sum(jnp.tanh(module.apply(p, x))))(x)
      return jnp.sum(jnp.square(grad))
    return jax.grad(penalty)(params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), r1(ours), r1(xla))


def test_the_trunk_computes_the_same_function_either_way():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  patches, xla = (images.DCGANTrunk(image_shape=(8, 8, 1), width=4, strided_conv=c) for c in ("patches", "xla"))
  params = xla.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(patches.apply(params, x), xla.apply(params, x), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unknown strided convolution"):
    images.build_image_networks("dcgan", (8, 8, 1), strided_conv="fft")
