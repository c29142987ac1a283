"""Evaluators as data: each `make_*` builds, once per experiment, a function of the state that
measures one thing, with its jitted parts taking parameters as arguments; `eval.evaluators`
names which run (default `auto`: every one that applies to the experiment).

  bound_terms     energies, the entropy and NLL lower bounds (every run)
  upper_bound     the upper-bound penalty, the entropy and KL upper bounds and the game's NLL upper bound
                  with its status (every run)
  density         2-D data: log Z by quadrature, the exact test NLL, KL(p_data ‖ p_θ), the figure
  diffusion_nll   time-conditioned energies: the diffusion NLL bound (images: bits per dimension)
  sample_quality  images: FID, IS, precision/recall and PRD in the configured feature network
  samples         images: the grid of generator samples
"""

import logging
import os
from typing import Callable, NamedTuple

import jax
import numpy as np

from bdbounds import plotting, writers
from bdbounds.evaluators.bound_terms import make_bound_terms
from bdbounds.evaluators.common import (EvalInputs, Shared, create_inputs, make_shared, mean_stderr,
                                        sampling_params, step_key)
from bdbounds.evaluators.density import make_density
from bdbounds.evaluators.diffusion import make_diffusion_evaluator, make_diffusion_nll
from bdbounds.evaluators.report import format_report
from bdbounds.evaluators.sandwich import assemble
from bdbounds.evaluators.upper_bound import make_upper_bound
from bdbounds.evaluators.samples import create_feature_net, make_sample_grid, make_sample_quality

logger = logging.getLogger(__name__)


class Spec(NamedTuple):
  make: Callable                 # (exp, shared) -> (state, inputs) -> (report, figure or None)
  applies: Callable              # exp -> bool
  needs: str                     # what `applies` asks for, in words


EVALUATORS = {
    "bound_terms": Spec(make_bound_terms, lambda exp: True, ""),
    "upper_bound": Spec(make_upper_bound, lambda exp: True, ""),
    "density": Spec(make_density, lambda exp: exp.is_toy, "2-D data"),
    "diffusion_nll": Spec(make_diffusion_evaluator, lambda exp: exp.settings.time_conditioned_energy,
                          "a time-conditioned energy (bounds.upper='diffusion')"),
    "sample_quality": Spec(make_sample_quality, lambda exp: not exp.is_toy, "images"),
    "samples": Spec(make_sample_grid, lambda exp: not exp.is_toy, "images"),
}


def evaluator_names(exp) -> tuple:
  """The evaluators `exp.eval.evaluators` names, checked; every one that applies where it names none."""
  names = exp.eval.evaluators or tuple(n for n, spec in EVALUATORS.items() if spec.applies(exp))
  for name in names:
    if name not in EVALUATORS:
      raise ValueError(f"eval.evaluators names {name!r}; choose from {', '.join(EVALUATORS)} (or auto)")
    if not EVALUATORS[name].applies(exp):
      raise ValueError(f"eval.evaluators names {name!r}, which needs {EVALUATORS[name].needs}; "
                       f"leave it out, or use eval.evaluators=auto")
  return names


def make_evaluation(exp) -> Callable:
  """`(state, *, key) -> (report, figure or None)`: every evaluator of `exp` on one state, with the
  examples and keys they share drawn from `key`. Building it checks the evaluators' settings
  (names, feature network, weights file), so a mistake stops a run before it trains."""
  shared = make_shared(exp)
  evaluators = [(name, EVALUATORS[name].make(exp, shared)) for name in evaluator_names(exp)]

  def evaluate(state, *, key):
    inputs = create_inputs(exp, shared, state, key)
    report, figure = {"step": inputs.step}, None
    for name, evaluator in evaluators:
      part, image = evaluator(state, inputs)
      report.update(part)
      figure = image if image is not None else figure
    report.update(assemble(report, exp.settings))
    return report, figure
  return evaluate


def evaluate_and_write(evaluation: Callable, state, workdir: str, *, key, writer=None) -> dict:
  """Measure one state with the step's key (`step_key`, from the run's eval `key`); write `eval/<step>.json`,
  `plots/<step>.png` and the `eval/…` scalars (process 0); return the report."""
  step = int(state.step)
  logger.info("evaluating step %d", step)
  report, figure = evaluation(state, key=step_key(key, step))
  if jax.process_index() == 0:
    writers.write_json(os.path.join(workdir, "eval", f"{step}.json"), report)
    if figure is not None:
      plotting.save_png(os.path.join(workdir, "plots", f"{step}.png"), figure)
    if writer is not None:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in report.items()
                                  if isinstance(v, (int, float)) and k != "step"})
      if figure is not None:
        writer.write_images(step, {"eval/plot": np.asarray(figure)})
  return report


__all__ = ["EVALUATORS", "EvalInputs", "Shared", "create_feature_net", "create_inputs", "evaluate_and_write",
           "evaluator_names", "format_report", "make_bound_terms", "make_density", "make_diffusion_evaluator",
           "make_diffusion_nll", "make_evaluation", "make_sample_grid", "make_sample_quality", "make_shared",
           "make_upper_bound", "mean_stderr", "sampling_params", "step_key"]
