"""Where an image step's time goes: each part of the game compiled and timed on its own.

    python bench/step_parts.py                                          # CIFAR-10 size, jacobian + latent_fisher
    python bench/step_parts.py --set bounds.upper=r1 bounds.jacobian_num_iters=2

Parts (batch of the config, synthetic images, parameters at initialisation):
  energy          ∇θ of E_data[E] − E_q[E] on a data batch and generator samples (no penalty)
  penalty         ∇θ of the unweighted upper-bound penalty (for latent_fisher: with the latent score)
  energy_loss     ∇θ of the whole energy loss (what one energy update differentiates)
  solver          the s_min eigen-solve alone, per latent (no gradient)
  entropy_bound   ∇φ of the entropy lower bound (solve + envelope gradient)
  generator_loss  ∇φ of the whole generator loss
  step            the trainer's whole step (energy and generator updates, optimisers, metrics)
Each row gives the median time, XLA's GFLOP count and the rate; the parts overlap (energy_loss
contains energy and penalty), so they do not add up to the step.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # for `configs`
sys.path.insert(0, os.path.dirname(__file__))                      # for `stepping`, `image_step`

from bdbounds import bounds, experiment  # noqa: E402
from image_step import image_dataset_for  # noqa: E402
from stepping import compiled_step, load_config, median_seconds  # noqa: E402


def time_compiled(fn, args, repeats: int) -> tuple[float, float]:
  """`(median seconds, GFLOP)` of `jax.jit(fn)(*args)`, compiled ahead of time."""
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return median_seconds(compiled, *args, repeats=repeats), float(cost.get("flops", float("nan"))) / 1e9


def parts(exp, state, x_data, z, key):
  """`{name: (fn, args)}`: the parts of the docstring as functions of parameters and inputs."""
  game, s = exp.game, exp.settings
  energy_params, gen_params = state.energy.params, state.generator.params
  critic_params = state.critic.params if state.critic is not None else None
  batch_energy = lambda p, x: jax.vmap(lambda x: exp.nets.energy(p, x))(x)

  def energy(p, x_data, z, key):
    x_fake = jax.lax.stop_gradient(game.sample_fake(gen_params, z, key))
    return jnp.mean(batch_energy(p, x_data)) - jnp.mean(batch_energy(p, x_fake))

  def penalty(p, x_data, z, key):
    x_fake = jax.lax.stop_gradient(game.sample_fake(gen_params, z, key))
    return game.upper_penalty(p, gen_params, x_data, x_fake, z, key)

  def solver(z, key):
    generator = lambda z: exp.nets.generator(gen_params, z)
    return jax.vmap(lambda z, k: bounds.jtj_eigs(generator, z, key=k, num_iters=s.jacobian_num_iters,
                                                 k=s.jacobian_k, method=s.jacobian_method).eigvals)(
        z, jax.random.split(key, z.shape[0]))

  grad = lambda f: jax.grad(lambda p, *a: f(p, *a))
  table = {
      "energy": (grad(energy), (energy_params, x_data, z, key)),
      "penalty": (grad(penalty), (energy_params, x_data, z, key)),
      "energy_loss": (jax.grad(lambda p, x, z, k: game.energy_loss(p, gen_params, x, z, 0, k)[0]),
                      (energy_params, x_data, z, key)),
      "entropy_bound": (jax.grad(lambda p, z, k: game.entropy_bound(p, critic_params, z, k).value),
                        (gen_params, z, key)),
      "generator_loss": (jax.grad(lambda p, z, k: game.generator_loss(p, energy_params, critic_params, z, k)[0]),
                         (gen_params, z, key)),
  }
  if not s.noisy_generator:
    table["solver"] = (solver, (z, key))
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/cifar10.py", help="an image config file")
  parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  config = load_config(args.config, args.set)
  dataset = image_dataset_for(config)
  exp = experiment.create_experiment(config, dataset=dataset)
  state = exp.init_state(jax.random.PRNGKey(0))
  batch = config.training.batch_size
  x_data = jnp.asarray(dataset.read_train(np.arange(batch)))
  z = jax.random.normal(jax.random.PRNGKey(1), (batch, exp.latent_dim))
  key = jax.random.PRNGKey(2)
  print(f"devices: {jax.devices()}  config {args.config}  {exp.settings.lower} + {exp.settings.upper}  "
        f"batch {batch}  solver {exp.settings.jacobian_method} × {exp.settings.jacobian_num_iters}\n")
  print("| part | median (s) | GFLOP | GFLOP/s |\n|---|---:|---:|---:|")
  for name, (fn, fn_args) in parts(exp, state, x_data, z, key).items():
    seconds, gflop = time_compiled(fn, fn_args, args.repeats)
    print(f"| {name} | {seconds:.3f} | {gflop:.1f} | {gflop / seconds:.0f} |", flush=True)
  run, info = compiled_step(config, dataset)
  seconds = float(np.median(run(args.repeats)))
  print(f"| step | {seconds:.3f} | {info.gflop:.1f} | {info.gflop / seconds:.0f} |", flush=True)


if __name__ == "__main__":
  main()
