"""What the energy network can learn on its own: maximum likelihood with a fixed proposal.

    python -m bdbounds.experiments.energy_alone --data=25gaussians --hidden=100,100,100
    python -m bdbounds.experiments.energy_alone --data=25gaussians --hidden=100,100 --num_proposals=200
    python -m bdbounds.experiments.energy_alone --data=rings --config=configs/toy.py:smoke --num_steps=200

No generator and no bound: the energy minimises `E_data[E] + log Ẑ_K` with K proposals drawn
uniformly from a box around the data (`objectives.importance_nll`), so its gradient is
the self-normalised estimate of the maximum-likelihood gradient with a proposal that covers
everything. The learning rate and its cosine decay, the batch size, the input scale and the
annealed data noise are those of `--config` (default `configs/toy.py`, with the data set appended
to its presets); Adam's β are the usual (0.9, 0.999). What the energy reaches here is a ceiling
for the game at the same architecture, budget and K; the gap between the two is what the game
loses.
Prints one JSON line per evaluation: the step, KL(p_data ‖ p_θ) as a Monte-Carlo mean over the
test samples with log Z by quadrature (the trainer's report integrates the KL on a grid
instead), its standard error, and seconds.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bdbounds import config_files, metrics, models, objectives, steps
from bdbounds.data import get_toy_dataset

DEFAULT_CONFIG = "configs/toy.py"


def train_energy_alone(data: str, hidden, *, num_steps: int, num_proposals: int, seed: int = 0,
                       num_evals: int = 3, num_test: int = 20_000, margin: float = 0.1,
                       config_file: str = DEFAULT_CONFIG):
  """Train, and yield `{"step", "kl", "kl_stderr", "seconds"}` at `num_evals` even steps."""
  config = config_files.load_config_file(config_files.with_presets(config_file, data))
  t, m = config.training, config.model
  dataset = get_toy_dataset(data)
  energy = models.Energy(tuple(hidden), m.activation, m.energy_base_std, m.energy_input_scale)
  test = np.asarray(dataset.sample(jax.random.PRNGKey(seed + 1), num_test))
  lo, hi = test.min(axis=0), test.max(axis=0)
  lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
  log_q = -float(np.sum(np.log(hi - lo)))  # the uniform proposal's density on the box
  # Adam's usual β = (0.9, 0.999), not the game's (0, 0.9): with those, this runs away too
  # (docs/results.md), and the question here is what the network can fit.
  optimizer = optax.adam(optax.cosine_decay_schedule(t.energy_lr, num_steps, alpha=0.05))
  key, init_key = jax.random.split(jax.random.PRNGKey(seed))
  params = energy.init(init_key, jnp.zeros((2,)))
  opt_state = optimizer.init(params)
  noise_steps = int(t.data_noise_fraction * num_steps)

  def loss(params, x, proposals):
    energies = energy.apply(params, proposals)
    return objectives.importance_nll(jnp.mean(energy.apply(params, x)), energies,
                                     jnp.full(energies.shape, log_q))[0]

  @jax.jit
  def step(params, opt_state, key, i):
    data_key, noise_key, proposal_key = jax.random.split(key, 3)
    x = dataset.sample(data_key, t.batch_size)
    x = x + steps.data_noise_std(i, t.data_noise, noise_steps) * jax.random.normal(noise_key, x.shape)
    proposals = jax.random.uniform(proposal_key, (num_proposals, 2), minval=lo, maxval=hi)
    grads = jax.grad(loss)(params, x, proposals)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  start = time.perf_counter()
  eval_every = max(num_steps // num_evals, 1)
  for i in range(num_steps):
    params, opt_state = step(params, opt_state, jax.random.fold_in(key, i), i)
    if (i + 1) % eval_every == 0 or i + 1 == num_steps:
      energy_fn = lambda x, p=params: energy.apply(p, x)
      log_z = metrics.adaptive_log_partition(energy_fn, test).log_z
      kl = metrics.kl_data_model_mc(dataset.log_prob, energy_fn, log_z, test)
      yield {"step": i + 1, "kl": kl.value, "kl_stderr": kl.stderr, "seconds": time.perf_counter() - start}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="25gaussians", help="a 2-D data set with a known density")
  parser.add_argument("--hidden", default="100,100,100", help="the energy MLP's hidden widths")
  parser.add_argument("--num_steps", type=int, default=30_000)
  parser.add_argument("--num_proposals", type=int, default=1000, help="K uniform proposals per step")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help=f"2-D config file[:presets] of the training settings (default {DEFAULT_CONFIG})")
  args = parser.parse_args(argv)
  if get_toy_dataset(args.data).log_prob is None:
    parser.error(f"--data={args.data} has no closed-form density, so no KL; use one that has")
  try:
    config_files.load_config_file(config_files.with_presets(args.config, args.data))
  except ValueError as e:
    parser.error(f"--config: {e}")
  hidden = [int(w) for w in args.hidden.split(",")]
  for row in train_energy_alone(args.data, hidden, num_steps=args.num_steps, num_proposals=args.num_proposals,
                                seed=args.seed, config_file=args.config):
    print(json.dumps({**vars(args), **row}), flush=True)


if __name__ == "__main__":
  main()
