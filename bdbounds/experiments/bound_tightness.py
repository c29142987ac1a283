"""How tight, how noisy and how costly each bound is, measured on the trained 2-D models of a sweep.

    python -m bdbounds.experiments.bound_tightness --sweep=runs/quick
    python -m bdbounds.experiments.bound_tightness --sweep=runs/quick --datasets=8gaussians --seed=0 \\
        --num_batches=20 --batch_size=200 --output=runs/quick/tightness.md
    python -m bdbounds.experiments.bound_tightness --sweep=runs/quick --critic_steps=5000   # MI: a long-run critic too

Every finished run of a toy sweep (`<sweep>/<data set>/<lower>+<upper>/seed<k>/` holding a
`result.json` and a checkpoint, see `toy_sweep`) is restored at its latest checkpoint and
measured over `num_batches` independent batches of `batch_size`, each with fresh latents, data,
noise and keys. Diverged runs are skipped (listed at the end of the report). Nothing is trained
and nothing in the run directories is written.

Entropy lower bound H_lb(q) of the run's generator, against the exact entropy of the same generator
  lower = jacobian, jacobian_exact (manifold generator x = G(z), d = D = 2). Exact reference:
      H(z) + E_z[½ log det JᵀJ]  (the objectives' `entropy_bound` with lower="jacobian_exact",
  on the same latents as the bound, so the gap of each batch is paired). `jacobian` with
  jacobian_method="dense" is NOT exact: "dense" only names the eigensolver, the value is still
  the singular-value bound Σ_{i<k} log s_(i) + (d − k + 1) log s_(k) (k = 1: d·log s_min), whose gap
  is Σ_{i>k} log(s_(i)/s_(k)) ≥ 0 (log(s_max/s_min) for d = 2, k = 1), and 0 only when the d − k + 1
  largest singular values are equal (a conformal Jacobian, or k = d). A matrix-free solve
  (lanczos, lobpcg) that has not converged over-states s_(k), so its "bound" can exceed the
  exact value (a negative gap). The reference is itself a Monte-Carlo mean over the
  num_batches·batch_size latents (its standard error is shown); it equals H(q) only for an
  injective G. If det J changes sign over the latents (`fold_fraction` > 0, marked †) G folds, is
  not injective, and the reference then OVER-states H(q) (−log q(G(z)) ≤ −log φ(z) + log|det J|).
  For jacobian_exact runs the gap is 0 by construction: what remains is its noise and cost.
  lower = mutual_info (noisy generator x = G(z) + σε). Exact reference: the entropy of
  q(x) = E_z N(x; G(z), σ²I) by quadrature (`metrics.noisy_generator_entropy`): q on a grid of
  cells σ/2 wide over the means' box ± 6σ, as the mean of the Gaussian kernels of
  `num_quadrature_samples` means G(z). Its error estimate is the change at half the resolution
  plus the change with half of the means; the second matters: entropy is concave, so the
  entropy of the kernel mixture of finitely many means is biased LOW, most for σ small against
  the means' spacing.
  With `--critic_steps N` the run's critic is also trained N more steps on the frozen generator
  (plain Adam at the run's critic learning rate, fresh latents each step, the run's estimator)
  and the bound measured again on the same batches: the gap that is left belongs to the
  estimator and the critic's architecture, the rest of the first gap to the training critic.

KL upper bound: the run's θ-dependent penalty term (the objectives' `upper_penalty`, unweighted)
per batch; its mean and batch-to-batch std are its value and noise. With upper = diffusion, also the
diffusion bound on the test NLL against the exact NLL, from the run's last `eval/<step>.json`
(computed as the evaluation does, on its test set and key, where an older report lacks it).
The diffusion bound bounds the NLL of the diffusion model the time-conditioned energy defines,
which is the EBM's only if E(·, t > 0) are the diffused versions of E(·, 0): it need not lie
above the EBM's exact NLL.

Cost: median wall time of one jitted evaluation (warm, `jax.block_until_ready`) on one batch.

Columns of the report (`--output`, Markdown; the CSV next to it holds these and more):
  H_lb               mean over batches of the run's entropy lower bound, nats
  exact H            the exact reference (above) ± its error estimate (standard error of the mean
                     for the manifold reference; quadrature + sampling error for the noisy one)
  gap ± std          exact − H_lb, mean ± std over batches (≥ 0 for a true bound)
  H_lb batch std     std of H_lb over batches: the noise of the bound at this batch size
  upper penalty      the unweighted upper-bound term, mean ± std over batches (— for upper=none)
  diffusion / NLL    diffusion NLL bound / exact test NLL (difference), nats; upper=diffusion only
  ms H_lb, ms upper  median ms of one evaluation of the entropy bound / the upper penalty
The CSV adds: sigma and the quadrature's resolution, quadrature_error, sampling_error, mass and
seconds (mutual_info); fold_fraction and ms_exact_entropy (jacobian*); upper_weight, the weight
λ_t the penalty carried at the run's last step; and the run's status and directory.
"""

import argparse
import dataclasses
import json
import math
import os
import time
import traceback
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bdbounds import evaluators, experiment, metrics, objectives
from bdbounds.data import TOY_DATASETS
from bdbounds.experiments.sweep import runner, tables

CSV_COLUMNS = (
    "dataset", "lower", "upper", "seed", "step", "status",
    "entropy_bound", "entropy_bound_std", "exact_entropy", "exact_entropy_error", "exact_method",
    "entropy_gap", "entropy_gap_std", "fold_fraction",
    "critic_steps", "entropy_bound_long_critic", "entropy_gap_long_critic", "entropy_gap_long_critic_std",
    "sigma", "quadrature_resolution", "quadrature_error", "sampling_error", "quadrature_mass",
    "upper_penalty_mean", "upper_penalty_std", "upper_weight",
    "diffusion_nll_bound", "nll", "diffusion_minus_nll", "diffusion_source",
    "ms_entropy_bound", "ms_exact_entropy", "ms_upper_penalty", "quadrature_s",
    "num_batches", "batch_size", "run_dir")


# ---------------------------------------------------------------------------------------------
# Measuring one trained model


def _batch_keys(key, b: int) -> dict:
  """Independent keys of batch b: latents, the bound's own randomness, data, generator noise, penalty."""
  return dict(zip(("z", "bound", "data", "fake", "penalty"), jax.random.split(jax.random.fold_in(key, b), 5)))


def _warm_then_time(fn, batches):
  """`fn(*args)` for every batch, after one warm-up call (compilation) on the first:
  `(values [num_batches], seconds [num_batches])`."""
  jax.block_until_ready(fn(*batches[0]))
  values, seconds = [], []
  for args in batches:
    start = time.perf_counter()
    values.append(np.asarray(jax.block_until_ready(fn(*args)), np.float64))
    seconds.append(time.perf_counter() - start)
  return np.asarray(values), np.asarray(seconds)


def _mean_std(values) -> tuple:
  """Mean and sample std over batches (std None for one batch)."""
  return tuple(tables.mean_std(values)[:2])


def make_entropy_fns(game: objectives.Objectives) -> dict:
  """Jitted `(gen_params, critic_params, z, key) -> scalar`: the game's entropy `bound` and, for
  the manifold generator, the `exact` ½ log det JᵀJ value; and `det_sign` `(gen_params, z [B, d]) -> [B]`."""
  value_of = lambda g: jax.jit(lambda gp, cp, z, k: g.entropy_bound(gp, cp, z, k).value)
  fns = {"bound": value_of(game)}
  if not game.settings.noisy_generator:
    generator = game.nets.generator
    fns["exact"] = value_of(objectives.make_objectives(
        dataclasses.replace(game.settings, lower="jacobian_exact"), game.nets))
    fns["det_sign"] = jax.jit(jax.vmap(
        lambda g, z: jnp.sign(jnp.linalg.det(jax.jacfwd(lambda z: jnp.ravel(generator(g, z)))(z))),
        in_axes=(None, 0)))
  return fns


def make_critic_trainer(game: objectives.Objectives, *, latent_dim: int, num_steps: int, batch_size: int,
                        learning_rate: float = 3e-4):
  """Jitted `(critic_params, gen_params, key) -> critic_params`: the critic after `num_steps` more
  Adam steps on the frozen generator, each on fresh latents and noise with the run's own loss
  (the game's `critic_loss`). Its bound is close to the best its architecture and estimator
  reach on this generator, so the gap left to the exact entropy is the estimator's and the
  family's, and the difference from the run's critic is the training's shortfall. Parameters
  are arguments, so runs that share a pairing and model compile it once."""
  optimizer = optax.adam(learning_rate)

  def train(critic_params, gen_params, key):
    def step(carry, k):
      params, opt_state = carry
      z_key, loss_key = jax.random.split(k)
      z = jax.random.normal(z_key, (batch_size, latent_dim))
      grads = jax.grad(lambda c: game.critic_loss(c, gen_params, z, loss_key)[0])(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    carry = (critic_params, optimizer.init(critic_params))
    return jax.lax.scan(step, carry, jax.random.split(key, num_steps))[0][0]

  return jax.jit(train)


def train_critic(game: objectives.Objectives, critic_params, gen_params, *, latent_dim: int, key, num_steps: int,
                 batch_size: int, learning_rate: float = 3e-4):
  """`make_critic_trainer`'s critic, trained once."""
  trainer = make_critic_trainer(game, latent_dim=latent_dim, num_steps=num_steps, batch_size=batch_size,
                                learning_rate=learning_rate)
  return trainer(critic_params, gen_params, key)


def measure_entropy(game: objectives.Objectives, gen_params, critic_params, *, latent_dim: int, key,
                    num_batches: int, batch_size: int, num_quadrature_samples: int = 20_000,
                    fns: Mapping | None = None, long_critic_params=None, **quadrature) -> dict:
  """The entropy lower bound of one generator over independent batches, against its exact value.

  Manifold generator: the exact `½ log det JᵀJ` value on the same latents (paired gaps) and the
  share of latents on the minority side of a sign change of det J (`fold_fraction`; square J only).
  Noisy generator: `metrics.noisy_generator_entropy` of `num_quadrature_samples` means G(z)
  (keyword arguments `quadrature` go to it), and with `long_critic_params` (from `train_critic`)
  the bound on the same batches with that critic too. Times are per evaluation on one batch,
  after compilation.
  """
  if num_batches < 1 or batch_size < 2:
    raise ValueError("need num_batches ≥ 1 and batch_size ≥ 2 (the MI bounds pair examples within a batch)")
  fns = make_entropy_fns(game) if fns is None else fns
  nets = game.nets
  batches = []
  for b in range(num_batches):
    k = _batch_keys(key, b)
    batches.append((gen_params, critic_params, jax.random.normal(k["z"], (batch_size, latent_dim)), k["bound"]))
  bound, seconds = _warm_then_time(fns["bound"], batches)
  out = {"num_batches": num_batches, "batch_size": batch_size, "ms_entropy_bound": 1e3 * float(np.median(seconds))}
  out["entropy_bound"], out["entropy_bound_std"] = _mean_std(bound)

  if game.settings.noisy_generator:
    start = time.perf_counter()
    # fold_in(key, num_batches): a key no batch uses.
    z = jax.random.normal(jax.random.fold_in(key, num_batches), (num_quadrature_samples, latent_dim))
    means = np.asarray(jax.jit(jax.vmap(nets.generator, in_axes=(None, 0)))(gen_params, z))
    sigma = float(nets.sigma(gen_params))
    grid = metrics.noisy_generator_entropy(means.reshape(len(means), -1), sigma, **quadrature)
    cells = f"{grid.resolution[0]}x{grid.resolution[1]}"
    out.update(exact_entropy=grid.entropy, exact_entropy_error=grid.quadrature_error + grid.sampling_error,
               exact_method=f"quadrature ({num_quadrature_samples} means, {cells} cells)", sigma=sigma,
               quadrature_resolution=cells, quadrature_error=grid.quadrature_error,
               sampling_error=grid.sampling_error, quadrature_mass=grid.mass,
               quadrature_s=time.perf_counter() - start)
    gaps = grid.entropy - bound
    if long_critic_params is not None:
      long_bound, _ = _warm_then_time(fns["bound"], [(g, long_critic_params, *rest) for g, _, *rest in batches])
      out["entropy_bound_long_critic"] = _mean_std(long_bound)[0]
      out["entropy_gap_long_critic"], out["entropy_gap_long_critic_std"] = _mean_std(grid.entropy - long_bound)
  else:
    exact, exact_seconds = _warm_then_time(fns["exact"], batches)
    gaps = exact - bound
    out["exact_entropy"], exact_std = _mean_std(exact)
    out.update(exact_entropy_error=exact_std / math.sqrt(num_batches) if exact_std is not None else None,
               exact_method=f"jacobian_exact ({num_batches}×{batch_size} latents)",
               ms_exact_entropy=1e3 * float(np.median(exact_seconds)))
    if jax.eval_shape(nets.generator, gen_params, batches[0][2][0]).size == latent_dim:  # square J: signed det
      signs = np.concatenate([np.asarray(fns["det_sign"](gen_params, args[2])) for args in batches])
      out["fold_fraction"] = float(min(np.mean(signs > 0), np.mean(signs < 0)))
  out["entropy_gap"], out["entropy_gap_std"] = _mean_std(gaps)
  return out


def make_penalty_fns(game: objectives.Objectives, dataset, batch_size: int) -> dict:
  """Jitted `penalty` (the game's `upper_penalty`), `fake` (generator samples) and `data` samplers."""
  return {"penalty": jax.jit(game.upper_penalty), "fake": jax.jit(game.sample_fake),
          "data": jax.jit(lambda k: dataset.sample(k, batch_size))}


def measure_upper(game: objectives.Objectives, energy_params, gen_params, *, dataset, latent_dim: int, key,
                  num_batches: int, batch_size: int, step: int = 0, fns: Mapping | None = None) -> dict:
  """The unweighted upper-bound penalty over independent batches (data, latents, fakes, keys),
  as the energy's loss computes it, with the weight λ_step it carries in training; {} for none."""
  if game.settings.upper == "none":
    return {}
  fns = make_penalty_fns(game, dataset, batch_size) if fns is None else fns
  batches = []
  for b in range(num_batches):
    k = _batch_keys(key, b)
    z = jax.random.normal(k["z"], (batch_size, latent_dim))
    batches.append((energy_params, gen_params, fns["data"](k["data"]), fns["fake"](gen_params, z, k["fake"]), z,
                    k["penalty"]))
  values, seconds = _warm_then_time(fns["penalty"], batches)
  out = {"ms_upper_penalty": 1e3 * float(np.median(seconds)), "upper_weight": float(game.upper_weight(step))}
  out["upper_penalty_mean"], out["upper_penalty_std"] = _mean_std(values)
  return out


def last_eval_report(run_dir: str) -> dict:
  """The run's last `eval/<step>.json` ({} if none)."""
  eval_dir = os.path.join(run_dir, "eval")
  names = os.listdir(eval_dir) if os.path.isdir(eval_dir) else []
  steps = sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
  if not steps:
    return {}
  with open(os.path.join(eval_dir, f"{steps[-1]}.json"), encoding="utf-8") as f:
    return json.load(f)


def diffusion_comparison(exp: experiment.Experiment, state, report: Mapping) -> dict:
  """Diffusion NLL bound vs the exact NLL of the final evaluation; the bound is recomputed as the
  evaluation computes it (its test set and key, `evaluators.create_inputs`) when the report predates it."""
  out = {"nll": report.get("nll")}
  if "diffusion_nll_bound" in report:
    out.update(diffusion_nll_bound=report["diffusion_nll_bound"], diffusion_source="eval report")
  else:
    key = evaluators.step_key(exp.keys["eval"], int(state.step))
    inputs = evaluators.create_inputs(exp, evaluators.make_shared(exp), state, key)
    terms = evaluators.make_diffusion_nll(exp)(state.energy.params, inputs.test, key=inputs.keys["diffusion"])
    out.update(diffusion_nll_bound=terms["diffusion_nll_bound"], diffusion_source="computed")
  if out["nll"] is not None:
    out["diffusion_minus_nll"] = out["diffusion_nll_bound"] - out["nll"]
  return out


def measure_run(run_dir: str, *, key, num_batches: int = 20, batch_size: int = 200,
                num_quadrature_samples: int = 20_000, critic_steps: int = 0, cache: dict | None = None) -> dict:
  """Every measure of one run directory (one row of the report). With `critic_steps` > 0 a
  mutual_info run's critic is also trained that much longer (`make_critic_trainer`) and measured again.

  `cache` maps a pairing and model config to its jitted functions, which take parameters as
  arguments: runs that share them (other seeds) compile nothing.
  """
  config = experiment.load_config(run_dir)
  exp, state = experiment.restore(run_dir, config=config)
  settings, game = exp.settings, exp.game
  step = int(state.step)
  critic_params = state.critic.params if state.critic is not None else None
  cache = {} if cache is None else cache
  fn_key = (settings, json.dumps(config.model.to_dict(), sort_keys=True, default=str), exp.name, batch_size)
  if fn_key not in cache:
    cache[fn_key] = (make_entropy_fns(game), make_penalty_fns(game, exp.dataset, batch_size))
  entropy_fns, penalty_fns = cache[fn_key]
  row = {"lower": settings.lower, "upper": settings.upper, "seed": exp.seed, "dataset": exp.name, "step": step,
         "run_dir": run_dir}
  long_critic_params = None
  if critic_steps > 0 and settings.uses_critic:
    trainer_key = (fn_key, critic_steps, exp.train.critic_lr)
    if trainer_key not in cache:
      cache[trainer_key] = make_critic_trainer(game, latent_dim=exp.latent_dim, num_steps=critic_steps,
                                               batch_size=batch_size, learning_rate=exp.train.critic_lr)
    # fold_in(key, num_batches + 1): a key that no batch and not the quadrature uses.
    long_critic_params = cache[trainer_key](critic_params, state.generator.params,
                                            jax.random.fold_in(key, num_batches + 1))
    row["critic_steps"] = critic_steps
  row.update(measure_entropy(game, state.generator.params, critic_params, latent_dim=exp.latent_dim, key=key,
                             num_batches=num_batches, batch_size=batch_size,
                             num_quadrature_samples=num_quadrature_samples, fns=entropy_fns,
                             long_critic_params=long_critic_params))
  row.update(measure_upper(game, state.energy.params, state.generator.params, dataset=exp.dataset,
                           latent_dim=exp.latent_dim, key=key, num_batches=num_batches, batch_size=batch_size,
                           step=step, fns=penalty_fns))
  if settings.time_conditioned_energy:
    row.update(diffusion_comparison(exp, state, last_eval_report(run_dir)))
  return row


# ---------------------------------------------------------------------------------------------
# The report


def _pm(mean, std, digits=3) -> str:
  return tables.format_mean_std(mean, std, digits, std_format=f".{digits}g")


def markdown_row(r: Mapping) -> str:
  exact = _pm(r.get("exact_entropy"), r.get("exact_entropy_error"))
  if tables.is_finite(r.get("fold_fraction")) and r["fold_fraction"] > 0:
    exact += " †"
  if tables.is_finite(r.get("diffusion_nll_bound")):
    diffusion = f"{r['diffusion_nll_bound']:.3f} / {tables.format_number(r.get('nll'))}"
    if tables.is_finite(r.get("diffusion_minus_nll")):
      diffusion += f" ({r['diffusion_minus_nll']:+.3f})"
  else:
    diffusion = "—"
  cells = [r["dataset"], f"{r['lower']}+{r['upper']}", str(r["seed"]), tables.format_number(r.get("entropy_bound")),
           exact, _pm(r.get("entropy_gap"), r.get("entropy_gap_std")),
           _pm(r.get("entropy_gap_long_critic"), r.get("entropy_gap_long_critic_std")),
           tables.format_number(r.get("entropy_bound_std"), 4),
           _pm(r.get("upper_penalty_mean"), r.get("upper_penalty_std"), 4), diffusion,
           tables.format_number(r.get("ms_entropy_bound"), 2), tables.format_number(r.get("ms_upper_penalty"), 2)]
  return "| " + " | ".join(cells) + " |"


HEADER = ("data set", "pairing", "seed", "H_lb", "exact H", "gap ± std", "gap, long-run critic", "H_lb batch std",
          "upper penalty", "diffusion / NLL", "ms H_lb", "ms upper")
NOTES = [
    "- **H_lb**: the run's entropy lower bound, mean over batches. **exact H**: manifold generator "
    "(jacobian*): H(z) + E[½ log det JᵀJ] on the same latents ± its standard error; noisy generator "
    "(mutual_info): H of q = E_z N(G(z), σ²I) by grid quadrature ± (quadrature + sampling) error.",
    "- **gap ± std**: exact − H_lb, mean ± std over batches (negative: not a bound there, e.g. an "
    "unconverged Ritz value or DV's minibatch plug-in). **H_lb batch std**: the bound's own noise "
    "between batches.",
    "- **gap, long-run critic**: mutual_info runs with `--critic_steps` N: the gap on the same batches "
    "after the run's critic trained N more steps on the frozen generator (what remains is the "
    "estimator's and the critic family's; the difference from **gap** is the training critic's shortfall).",
    "- **upper penalty**: the unweighted θ-dependent KL-bound term, mean ± std over batches (— for "
    "none). **diffusion / NLL**: diffusion NLL bound / exact test NLL (difference) from the final "
    "evaluation.",
    "- **ms**: median wall time of one jitted evaluation on one batch, warm.",
    "- †: det J changes sign over the latents (G folds, not injective): the manifold reference then "
    "over-states the true entropy."]


def results_markdown(rows: Sequence[Mapping], skipped: Sequence = (), *, sweep: str = "") -> str:
  rows = sorted(rows, key=tables.sort_key)
  lines = ["# Bound tightness, noise and cost on trained 2-D models", ""]
  if rows:
    nb, bs = rows[0]["num_batches"], rows[0]["batch_size"]
    lines += [f"{len(rows)} run(s){' of ' + sweep if sweep else ''}, each at its last checkpoint; "
              f"{nb} independent batches of {bs} (fresh latents, data and keys). Nats; ms on this machine.", ""]
  lines += tables.markdown_table(HEADER, [], "ll" + "r" * (len(HEADER) - 2))
  lines += [markdown_row(r) for r in rows] or ["| *no finished runs* |" + " |" * (len(HEADER) - 1)]
  lines += ["", *NOTES]
  if skipped:
    cells = [(r["dataset"], f"{r['lower']}+{r['upper']}", str(r["seed"]), tables.escape_cell(reason))
             for r, reason in sorted(skipped, key=lambda s: tables.sort_key(s[0]))]
    lines += ["", "## Not measured", "",
              *tables.markdown_table(("data set", "pairing", "seed", "reason"), cells, "llrl")]
  return "\n".join(lines) + "\n"


def results_csv(rows: Sequence[Mapping]) -> str:
  return tables.results_csv(rows, CSV_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bdbounds.experiments.bound_tightness", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", required=True, help="a toy_sweep workdir")
  parser.add_argument("--datasets", help="comma-separated data sets to measure (default: all in the sweep)")
  parser.add_argument("--seed", type=int, help="measure only this seed (default: every seed)")
  parser.add_argument("--num_batches", type=int, default=20, help="independent batches per run")
  parser.add_argument("--batch_size", type=int, default=200, help="examples per batch")
  parser.add_argument("--num_quadrature_samples", type=int, default=20_000,
                      help="generator means G(z) in the noisy generator's exact entropy")
  parser.add_argument("--critic_steps", type=int, default=0,
                      help="mutual_info runs: also measure the bound after training the critic this many more "
                           "steps on the frozen generator (0: off)")
  parser.add_argument("--rng_seed", type=int, default=0, help="seed of the measurement's batches")
  parser.add_argument("--output", help="Markdown report (default: <sweep>/tightness.md); the CSV goes next to it")
  args = parser.parse_args(argv)
  args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
  if args.datasets and any(d not in TOY_DATASETS for d in args.datasets):
    parser.error(f"--datasets: choose from {', '.join(TOY_DATASETS)}")
  if args.num_batches < 1 or args.batch_size < 2 or args.num_quadrature_samples < 2 or args.critic_steps < 0:
    parser.error("--num_batches ≥ 1, --batch_size ≥ 2, --num_quadrature_samples ≥ 2 and --critic_steps ≥ 0")
  if not os.path.isdir(args.sweep):
    parser.error(f"--sweep {args.sweep}: no such directory")
  args.output = args.output or os.path.join(args.sweep, "tightness.md")
  return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  runs, skipped = runner.find_runs(args.sweep, args.datasets, args.seed)
  print(f"{len(runs)} run(s) to measure, {len(skipped)} skipped", flush=True)
  key, cache, rows = jax.random.PRNGKey(args.rng_seed), {}, []
  for run_dir, result in runs:
    start = time.perf_counter()
    try:
      row = measure_run(run_dir, key=key, num_batches=args.num_batches, batch_size=args.batch_size,
                        num_quadrature_samples=args.num_quadrature_samples, critic_steps=args.critic_steps,
                        cache=cache)
    except Exception as e:  # noqa: BLE001 -- one unreadable run must not lose the others' measures
      traceback.print_exc()
      skipped.append((result, f"{type(e).__name__}: {e}"))
      continue
    row["status"] = result.get("status")
    rows.append(row)
    print(f"{time.perf_counter() - start:6.1f} s  {markdown_row(row)}", flush=True)
  markdown = results_markdown(rows, skipped, sweep=args.sweep)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  runner.write_text(args.output, markdown)
  csv_path = runner.write_text(os.path.splitext(args.output)[0] + ".csv", results_csv(rows))
  print(markdown)
  print(f"wrote {args.output} and {csv_path}")
  return rows


if __name__ == "__main__":
  main()
