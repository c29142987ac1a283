"""The diffusion bound on −log p(x) of the diffusion model the time-conditioned energy defines,
on the test set; on images also in bits per dimension of the discrete pixels."""

import functools

import jax
import numpy as np

from bdbounds import bounds, metrics
from bdbounds.evaluators.common import batched, mean_stderr


def make_diffusion_nll(exp):
  """`(energy_params, x [N, ...], *, key, bin_width=None) -> report`: each term's mean nats over the
  examples `x` (`diffusion_recon`, `_prior`, `_diffusion`, `diffusion_nll_bound`), with standard errors.

  It bounds the NLL of the diffusion model, which is the EBM's only where E(·, t > 0) are the
  diffused versions of E(·, 0); with `bin_width` the data are dequantised first, so the bound is
  on the discrete images' NLL.
  """
  s, time_energy = exp.settings, exp.nets.time_energy

  def one(energy_params, x, key, bin_width):
    dequantize_key, bound_key = jax.random.split(key)
    if bin_width is not None:
      x = metrics.dequantize(x, bin_width, key=dequantize_key)
    return bounds.diffusion_nll_bound(lambda x, t: time_energy(energy_params, x, t), x, key=bound_key,
                                      num_t=exp.eval.diffusion_num_t, gamma_min=s.gamma_min, gamma_max=s.gamma_max)

  # One batched function per bin width the data can have (continuous, and the images' own).
  terms_fns = {width: batched(jax.vmap(functools.partial(one, bin_width=width), in_axes=(None, 0, 0)),
                              exp.eval.batch_size) for width in _bin_widths(exp)}

  def diffusion_nll(energy_params, x, *, key, bin_width=None):
    terms = terms_fns[bin_width](x, jax.random.split(key, len(x)), shared=(energy_params,))
    report = {}
    for name, values in zip(bounds.DiffusionBound._fields, terms):
      name = "diffusion_nll_bound" if name == "total" else f"diffusion_{name}"
      report[name], report[f"{name}_stderr"] = mean_stderr(values)
    return report
  return diffusion_nll


def _bin_widths(exp):
  """None (continuous data) and, for images with a known number of levels, their bin width."""
  levels = None if exp.is_toy else exp.dataset.num_levels
  return (None,) + ((metrics.bin_width(levels),) if levels else ())


def make_diffusion_evaluator(exp, shared):
  """`(state, inputs) -> (report, None)`: the diffusion bound on the test set (images: the whole test
  split, dequantised, and `bits_per_dim`)."""
  nll = make_diffusion_nll(exp)
  width = _bin_widths(exp)[-1]

  def evaluate(state, inputs):
    if exp.is_toy:
      test = inputs.test
    else:
      test = exp.dataset.test_images(min(exp.eval.num_test, exp.dataset.num_test))
    report = nll(state.energy.params, test, key=inputs.keys["diffusion"], bin_width=width)
    if not exp.is_toy:
      report["bits_per_dim"] = float(metrics.bits_per_dim(report["diffusion_nll_bound"], test[0].size, width))
      report["bits_per_dim_examples"] = len(test)
    return report, None
  return evaluate
