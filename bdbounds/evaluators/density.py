"""2-D data: log Z of the EBM by adaptive quadrature, hence the exact test NLL and KL(p_data ‖ p_θ),
and the figure of data density, learned density at temperature 1 and generator samples."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds import metrics, plotting
from bdbounds.evaluators.common import mean_stderr

MAX_KL_RESOLUTION = 2048
PLOT_RESOLUTION = 512


def make_density(exp, shared):
  """`(state, inputs) -> (report, figure)`: log Z with its error estimate, the exact test NLL (± the
  standard error of its test-set mean), the KL where the data density is known, and the figure."""
  tol = exp.eval.quadrature_tol
  data_log_prob = exp.dataset.log_prob
  data_energy = jax.tree_util.Partial(lambda x: -data_log_prob(x))  # one function: compiled once

  def evaluate(state, inputs):
    energy_fn = jax.tree_util.Partial(shared.energies, state.energy.params)  # compiled once per run
    test = inputs.test
    # log Z on a grid that adapts to the model's mass, starting from the data's box.
    grid = metrics.adaptive_log_partition(energy_fn, test, tol=tol)
    energy_data, energy_data_stderr = mean_stderr(energy_fn(test))
    report = {"log_z": grid.log_z, "quadrature_error": grid.error_estimate,
              "quadrature_converged": bool(grid.converged), "quadrature_resolution": grid.resolution,
              "nll": energy_data + grid.log_z, "nll_stderr": energy_data_stderr}
    panels, box_lo, box_hi = [], np.asarray(grid.lo), np.asarray(grid.hi)
    if data_log_prob is not None:
      # KL(p_data ‖ p_θ) only integrates where the data has mass: use the data density's own
      # adaptive grid, refined to the model grid's spacing where that is finer.
      data_grid = metrics.adaptive_log_partition(data_energy, test, tol=tol)
      data_width = np.max(np.subtract(data_grid.hi, data_grid.lo))
      model_spacing = np.max(np.subtract(grid.hi, grid.lo)) / grid.resolution
      kl_resolution = min(MAX_KL_RESOLUTION, max(data_grid.resolution,
                                                 int(2 ** math.ceil(math.log2(data_width / model_spacing)))))
      report["kl_data_model"] = metrics.kl_data_model(data_log_prob, energy_fn, grid.log_z, data_grid.lo,
                                                      data_grid.hi, kl_resolution)
      box_lo, box_hi = np.asarray(data_grid.lo), np.asarray(data_grid.hi)
      report["test_entropy"], report["test_entropy_stderr"] = mean_stderr(-data_log_prob(jnp.asarray(test)))
      xs, ys, data_logp = metrics.density_on_grid(data_energy, 0.0, box_lo, box_hi,
                                                  PLOT_RESOLUTION)
      panels.append(("data density", data_logp))
    xs, ys, model_logp = metrics.density_on_grid(energy_fn, grid.log_z, box_lo, box_hi, PLOT_RESOLUTION)
    panels.append(("EBM density (T = 1)", model_logp))
    points = [("data samples", test[: len(inputs.fake)])] if data_log_prob is None else []
    points.append(("generator samples", np.asarray(inputs.fake)))
    figure = plotting.plot_density_panels(None, xs=xs, ys=ys, panels=panels, points=points,
                                          title=f"{exp.title} · step {inputs.step}")
    return report, figure
  return evaluate
