"""2-D data: log Z of the EBM by adaptive quadrature, hence the exact test NLL and KL(p_data ‖ p_θ),
and the figure of data density, learned density at temperature 1 and generator samples."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds import bounds, metrics, plotting
from bdbounds.evaluators.common import mean_stderr

MAX_KL_RESOLUTION = 2048
PLOT_RESOLUTION = 512
# The certified upper bound's proposal, an even mixture of two with exact densities: the model's own
# histogram on the quadrature box (close to p_θ wherever the grid resolves it), and a kernel density
# around test points and generator samples (which chase low energy, so sit on any run-away spike) at
# widths from 10⁻⁴ of the data's spread (narrower than a grid cell) to three times it (full support).
CERTIFIED_PROPOSALS_PER_SAMPLE = 10  # proposals per generator sample of the evaluation (2 000: 20 000)
CERTIFIED_CENTRES = 250  # of each: test points and generator samples
CERTIFIED_SCALES = (1e-4, 1e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
CERTIFIED_HISTOGRAM_RESOLUTION = 256
CERTIFIED_ASSUMPTION = ("Monte-Carlo only: log Z ≤ ½ log E_q0[(e^−E/q0)²] (χ², Jensen), q0 the model's "
                        "histogram mixed with a kernel density around test points and generator samples")


def make_density(exp, shared):
  """`(state, inputs) -> (report, figure)`: log Z with its error estimate, the exact test NLL (± the
  standard error of its test-set mean), the KL where the data density is known, and the figure."""
  tol = exp.eval.quadrature_tol
  data_log_prob = exp.dataset.log_prob
  data_energy = jax.tree_util.Partial(lambda x: -data_log_prob(x))  # one function: compiled once

  @jax.jit
  def proposal_terms(energy_params, centres, log_cell_mass, lo, hi, key):
    """Energies and mixture log-densities of half the batch from each component (balance heuristic:
    every draw is weighed by the mixture, which keeps E[w] = Z and E[mean w²] = E_q0[w²])."""
    kernel_key, histogram_key = jax.random.split(key)
    n = CERTIFIED_PROPOSALS_PER_SAMPLE * exp.eval.num_samples // 20
    x = jnp.concatenate([bounds.data_kernel_proposal(kernel_key, centres, n, scales=CERTIFIED_SCALES)[0],
                         bounds.histogram_proposal(histogram_key, log_cell_mass, lo, hi, n)[0]])
    log_q = jnp.logaddexp(bounds.data_kernel_log_density(x, centres, CERTIFIED_SCALES),
                          bounds.histogram_log_density(x, log_cell_mass, lo, hi)) - jnp.log(2.0)
    return jax.vmap(lambda x: exp.nets.energy(energy_params, x))(x), log_q

  def log_z_upper_bound(energy_params, test, fake, log_cell_mass, grid, key):
    """The χ² bound on log Z from ten proposals per generator sample (in ten batches), with its stderr and ESS."""
    centres = jnp.asarray(np.concatenate([test[:CERTIFIED_CENTRES], fake[:CERTIFIED_CENTRES]]), jnp.float32)
    args = (jnp.asarray(log_cell_mass, jnp.float32), jnp.asarray(grid.lo), jnp.asarray(grid.hi))
    parts = [proposal_terms(energy_params, centres, *args, k) for k in jax.random.split(key, 10)]
    energies, log_q = (jnp.concatenate(a) for a in zip(*parts))
    return (float(v) for v in bounds.chi2_log_partition_bound(energies, log_q))

  def evaluate(state, inputs):
    energy_fn = jax.tree_util.Partial(shared.energies, state.energy.params)  # compiled once per run
    test = inputs.test
    # log Z on a grid that adapts to the model's mass, starting from the data's box.
    # Probes: the test points and the generator's samples (it chases low energy, so a run-away
    # spike appears where it samples); the grid refines around any probe it does not resolve.
    fake = np.asarray(inputs.fake, np.float64)
    finite_fake = fake[np.all(np.isfinite(fake), axis=1)]
    probes = np.concatenate([np.asarray(test, np.float64), finite_fake])
    grid = metrics.adaptive_log_partition(energy_fn, test, tol=tol, probes=probes)
    energy_data, energy_data_stderr = mean_stderr(energy_fn(test))
    report = {"log_z": grid.log_z, "quadrature_error": grid.error_estimate,
              "quadrature_converged": bool(grid.converged), "quadrature_resolution": grid.resolution,
              "quadrature_refined_probes": grid.refined_probes, "quadrature_local_correction": grid.local_correction,
              "quadrature_max_probe_excess": grid.max_probe_excess, "quadrature_reason": grid.reason,
              "nll": energy_data + grid.log_z, "nll_stderr": energy_data_stderr}
    # The model on a coarser grid: the certified bound's histogram proposal, and its covariance.
    xs, ys, log_cell_mass = metrics.density_on_grid(energy_fn, 0.0, grid.lo, grid.hi,
                                                    min(grid.resolution, CERTIFIED_HISTOGRAM_RESOLUTION))
    upper, upper_stderr, upper_ess = log_z_upper_bound(state.energy.params, test,
                                                       finite_fake if len(finite_fake) else test, log_cell_mass,
                                                       grid, inputs.keys["certified"])
    report.update(log_z_upper_bound=upper, log_z_upper_bound_stderr=upper_stderr, log_z_upper_bound_ess=upper_ess,
                  nll_upper_bound_certified=energy_data + upper,
                  nll_upper_bound_certified_stderr=float(np.hypot(energy_data_stderr, upper_stderr)),
                  certified_assumption=CERTIFIED_ASSUMPTION)
    report["lsi_constant_lower"] = float(np.linalg.eigvalsh(_grid_covariance(xs, ys, log_cell_mass))[-1])
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


def _grid_covariance(xs, ys, log_mass) -> np.ndarray:
  """The `[2, 2]` covariance of the density ∝ exp(log_mass) at the cell centres (rows are y), by the
  midpoint rule. Its top eigenvalue bounds every log-Sobolev constant of the model from below: LSI(C)
  implies a Poincaré inequality with the same C, and `f(x) = uᵀx` gives `C ≥ uᵀ Cov u`."""
  p = np.exp(log_mass - log_mass.max())
  p /= p.sum()
  gx, gy = np.meshgrid(xs, ys)
  points = np.stack([gx.ravel(), gy.ravel()], axis=1)
  mean = p.ravel() @ points
  centred = points - mean
  return (centred * p.ravel()[:, None]).T @ centred
