"""The lower side: energies on test data and generator samples, the entropy lower bound and the NLL
lower bound `E_data[E] − E_q[E] + H_lb(q)`."""

import jax
import numpy as np

from bdbounds import objectives
from bdbounds.evaluators.common import mean_stderr


def make_bound_terms(exp, shared):
  """`(state, inputs) -> (report, None)`: each mean with its standard error over the examples.

  The entropy bound of the noisy generator is a batch estimator with no per-example split except
  for Barber–Agakov, so with the others it and the NLL lower bound carry no standard error.
  """
  game = exp.game

  @jax.jit
  def entropy(gen_params, critic_params, z, key):
    bound = game.entropy_bound(gen_params, critic_params, z, key)
    return bound.value, bound.per_example

  def evaluate(state, inputs):
    energy_params, gen_params = state.energy.params, state.generator.params
    critic_params = state.critic.params if state.critic is not None else None
    energy_data = np.asarray(shared.energies(energy_params, inputs.test))
    energy_fake = np.asarray(shared.energies(energy_params, inputs.fake))
    key = inputs.keys["bounds"]
    entropy_value, entropy_terms = entropy(gen_params, critic_params, inputs.z, key)
    report = {}
    report["energy_data"], report["energy_data_stderr"] = mean_stderr(energy_data)
    report["energy_fake"], report["energy_fake_stderr"] = mean_stderr(energy_fake)
    report["entropy_lower_bound"] = float(entropy_value)
    report["nll_lower_bound"] = objectives.nll_lower_bound({
        "energy_data": report["energy_data"], "energy_fake": report["energy_fake"],
        "entropy": report["entropy_lower_bound"]})
    if entropy_terms is not None:
      # Test and generator terms are independent; a latent's entropy term pairs with its sample.
      report["entropy_lower_bound_stderr"] = mean_stderr(entropy_terms)[1]
      paired = np.asarray(entropy_terms, np.float64) - energy_fake
      report["nll_lower_bound_stderr"] = float(np.hypot(report["energy_data_stderr"], mean_stderr(paired)[1]))
    return report, None
  return evaluate
