"""What the evaluators of one experiment share: jitted functions, each evaluation's inputs, and
means with their standard errors."""

from typing import Callable, NamedTuple

import jax
import numpy as np


class EvalInputs(NamedTuple):
  """The examples and keys of one evaluation, drawn once and shared by the evaluators."""
  step: int
  test: np.ndarray      # test examples for the energy statistics (2-D: sampled; images: the first ones)
  fake: jax.Array       # samples of the training generator
  z: jax.Array          # their latents
  keys: dict            # one key per use: "bounds", "certified", "diffusion", "quality", "samples"


class Shared(NamedTuple):
  """Jitted functions several evaluators need, made once per experiment. Parameters are
  arguments, not constants, so one compilation serves every state of a run."""
  energies: Callable   # (energy_params, x [N, ...]) -> energies [N]
  sample: Callable     # (generator_params, key, n) -> (samples [n, ...], latents [n, d])


def make_shared(exp) -> Shared:
  def sample(params, key, n):
    z_key, eps_key = jax.random.split(key)
    z = jax.random.normal(z_key, (n, exp.latent_dim))
    return exp.game.sample_fake(params, z, eps_key), z
  return Shared(energies=jax.jit(jax.vmap(exp.nets.energy, in_axes=(None, 0))),
                sample=jax.jit(sample, static_argnums=2))


def step_key(eval_key, step: int):
  """The key of the evaluation at `step`, from the run's `eval` key: a saved step is always
  evaluated with the same randomness."""
  return jax.random.fold_in(eval_key, step)


def create_inputs(exp, shared: Shared, state, key) -> EvalInputs:
  """Test examples, generator samples and keys for evaluating `state` with the step's `key`.

  The split is the one each kind of data has always used, so that reports of one saved state
  stay comparable across versions: 2-D data draw their test set from the key, and the diffusion
  bound shares the bound terms' key; images read the test split.
  """
  if exp.is_toy:
    test_key, sample_key, bound_key = jax.random.split(key, 3)
    test = np.asarray(exp.dataset.sample(test_key, exp.eval.num_test))
    keys = {"bounds": bound_key, "diffusion": bound_key, "samples": sample_key}
    n = exp.eval.num_samples
  else:
    sample_key, bound_key, diffusion_key, quality_key = jax.random.split(key, 4)
    n = min(exp.eval.num_samples, exp.eval.num_test, exp.dataset.num_test)
    test = exp.dataset.test_images(n)
    keys = {"bounds": bound_key, "diffusion": diffusion_key, "quality": quality_key, "samples": sample_key}
  keys["certified"] = jax.random.fold_in(key, 1)  # added later: folded in, so the split above is unchanged
  fake, z = shared.sample(state.generator.params, sample_key, n)
  return EvalInputs(int(state.step), test, fake, z, keys)


def sampling_params(state):
  """The generator parameters samples are shown from: the moving average where one is kept."""
  return state.generator_ema if state.generator_ema is not None else state.generator.params


def mean_stderr(values) -> tuple[float, float]:
  """Mean and its standard error (sample std / √n; 0 for one value), in float64."""
  v = np.asarray(values, np.float64).ravel()
  stderr = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
  return float(v.mean()), stderr


def batched(fn: Callable, batch_size: int) -> Callable[..., tuple[np.ndarray, ...]]:
  """Apply a jitted `fn(*shared, *arrays) -> tuple of arrays` over the arrays' leading axis in
  fixed-size batches (the last one padded, so there is one trace per input size class); the
  `shared` arguments (parameters, say) go to every batch whole."""
  jitted = jax.jit(fn)

  def apply(*arrays, shared=()):
    n = len(arrays[0])
    size = min(batch_size, n)
    outs = []
    for start in range(0, n, size):
      chunk = [np.asarray(a[start:start + size]) for a in arrays]
      m = len(chunk[0])
      chunk = [np.concatenate([c, np.repeat(c[-1:], size - m, axis=0)]) for c in chunk]
      outs.append([np.asarray(o)[:m] for o in jitted(*shared, *chunk)])
    return tuple(np.concatenate(parts) for parts in zip(*outs))
  return apply
