"""Evaluating saved runs: `--mode=eval` on a checkpoint, and the loaders notebooks and external
checks use (`load_energy`, `load_generator`). What an evaluation measures is in `evaluators`."""

from bdbounds import evaluators, experiment


def evaluate(config, workdir: str, step: int | None = None) -> dict:
  """`--mode=eval`: evaluate a saved step (latest by default) without touching training state."""
  exp, state = experiment.restore(workdir, step, config=config)
  report = evaluators.evaluate_and_write(evaluators.make_evaluation(exp), state, workdir, key=exp.keys["eval"])
  print(evaluators.format_report(report, workdir))
  return report


def load_energy(workdir: str, step: int | None = None):
  """`x [N, ...] -> energies [N]` of the EBM saved in `workdir` (latest step by default)."""
  exp, state = experiment.restore(workdir, step)
  energies = evaluators.make_shared(exp).energies
  return lambda x: energies(state.energy.params, x)


def load_generator(workdir: str, step: int | None = None):
  """`(key, n) -> samples [n, ...]` from the generator saved in `workdir` (its EMA if kept)."""
  exp, state = experiment.restore(workdir, step)
  sample = evaluators.make_shared(exp).sample
  params = evaluators.sampling_params(state)
  return lambda key, n: sample(params, key, n)[0]
