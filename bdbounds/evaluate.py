"""Evaluation: on 2-D data the exact NLL and KL by quadrature, the bound sandwich and density
plots; on images the energies, the bound terms, bits per dimension (diffusion bound), FID, IS,
precision/recall, and a grid of samples.

Also the loaders that notebooks and external checks use: `load_energy` and `load_generator`.
"""

import functools
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bdbounds import bounds, checkpointing, feature_nets, metrics, objectives, parallel, plotting, writers

MAX_KL_RESOLUTION = 2048


def _energy_batch_fn(exp, params):
  # Parameters are an argument, not a constant of the compiled function, so the kernel is the
  # same for every state (one compilation per run; reusable from a persistent compilation cache).
  energies = jax.jit(jax.vmap(exp.nets.energy, in_axes=(None, 0)))
  return lambda x: energies(params, x)


def _sample_generator(exp, params, key, n):
  z_key, eps_key = jax.random.split(key)
  z = jax.random.normal(z_key, (n, exp.latent_dim))
  return objectives.sample_fake(exp.settings, exp.nets, params, z, eps_key), z


def evaluate_state(config, exp, state, workdir, *, key, writer=None) -> dict:
  """Measure one state; write `eval/<step>.json`, `plots/<step>.png` and eval scalars."""
  evaluate_fn = _evaluate_toy if exp.is_toy else _evaluate_images
  report, image = evaluate_fn(config, exp, state, key=jax.random.fold_in(key, int(state.step)))
  if jax.process_index() == 0:
    step = report["step"]
    writers.write_json(os.path.join(workdir, "eval", f"{step}.json"), report)
    plotting.save_png(os.path.join(workdir, "plots", f"{step}.png"), image)
    if writer is not None:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in report.items()
                                  if isinstance(v, (int, float)) and k != "step"})
      writer.write_images(step, {"eval/plot": image})
  return report


def _bound_terms(exp, state, test, fake, z, key) -> dict:
  """Energies on data and samples, and the bound terms on the same examples."""
  energy_params, gen_params = state.energy.params, state.generator.params
  energy_fn = _energy_batch_fn(exp, energy_params)
  mean_energy = lambda x: float(np.mean(np.asarray(energy_fn(x)), dtype=np.float64))
  report = {"energy_data": mean_energy(test), "energy_fake": mean_energy(fake)}
  # The NLL lower bound E_data[E] − E_q[E] + H_lb(q), with fresh latents.
  critic_params = state.critic.params if state.critic is not None else None
  entropy, _ = jax.jit(lambda g, c, z, k: objectives.entropy_lower_bound(exp.settings, exp.nets, g, c, z, k))(
      gen_params, critic_params, z, key)
  report["entropy_lower_bound"] = float(entropy)
  report["nll_lower_bound"] = report["energy_data"] - report["energy_fake"] + report["entropy_lower_bound"]
  penalty = jax.jit(lambda e, g, x, f, z, k: objectives.upper_penalty(exp.settings, exp.nets, e, g, x, f, z, k))(
      energy_params, gen_params, jnp.asarray(test[: len(fake)]), fake, z, key)
  report["upper_penalty"] = float(penalty)
  return report


def _diffusion_nll(config, exp, state, x, *, key, bin_width=None) -> dict:
  """The diffusion bound on −log p(x) over the examples `x`: mean nats of each term.

  It bounds the NLL of the diffusion model that the time-conditioned energy defines; with
  `bin_width` the data are dequantised first, so `bits_per_dim` bounds the discrete images'.
  """
  s, energy_params = exp.settings, state.energy.params
  time_energy = lambda x, t: exp.nets.time_energy(energy_params, x, t)

  def one(x, k):
    dequantize_key, bound_key = jax.random.split(k)
    if bin_width is not None:
      x = metrics.dequantize(x, bin_width, key=dequantize_key)
    return bounds.diffusion_nll_bound(time_energy, x, key=bound_key, num_t=config.eval.diffusion_num_t,
                                      gamma_min=s.gamma_min, gamma_max=s.gamma_max)

  terms = feature_nets.batched(jax.vmap(one), config.eval.batch_size)(x, jax.random.split(key, len(x)))
  report = {f"diffusion_{name}": float(np.mean(t, dtype=np.float64))
            for name, t in zip(bounds.DiffusionBound._fields, terms)}
  report["diffusion_nll_bound"] = report.pop("diffusion_total")
  return report


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
  logging.warning("%s", message)


def check_config(config, exp) -> None:
  """Fail before training, not at the first evaluation hours later: the feature network is
  built (and cached) now, so a bad name, protocol or Inception weights file stops the run."""
  if not exp.is_toy:
    _feature_net(config, exp)


def _feature_net(config, exp):
  """The configured feature network, or None (with one line saying how to enable it)."""
  e = config.eval
  feature_nets.check_reference_split(e.fid_reference)
  if e.feature_net == "digits_classifier":
    if exp.dataset.name != "digits":
      raise ValueError(f"eval.feature_net=digits_classifier is trained on digits; {exp.dataset.name} needs "
                       "eval.feature_net=inception with eval.inception_weights")
    return feature_nets.digits_classifier_net(exp.data_shape[0], e.batch_size)
  if e.feature_net != "inception":
    raise ValueError(f"eval.feature_net={e.feature_net!r}; choose one of {feature_nets.FEATURE_NETS}")
  if e.inception_weights is None:
    _say_once("FID, IS and precision/recall skipped: set --config.eval.inception_weights=/path/fid_inception.npz "
              "(make it with python -m bdbounds.tools.convert_fid_inception; see docs/evaluation.md)")
    return None
  return feature_nets.inception_net(e.inception_weights, e.batch_size)


def _sample_quality(config, exp, params, *, key) -> dict:
  """FID and IS of `eval.fid_num_samples` generator samples, k-NN precision/recall and PRD."""
  net = _feature_net(config, exp)
  if net is None:
    return {}
  e = config.eval
  reference = feature_nets.reference_features(net, exp.dataset, e.fid_reference, e.fid_num_samples,
                                              e.pr_num_samples, e.stats_dir)
  sample = jax.jit(lambda k: _sample_generator(exp, params, k, e.batch_size)[0])
  features, logits = [], []
  for i in range(-(-e.fid_num_samples // e.batch_size)):
    f, lg = net.features(np.asarray(sample(jax.random.fold_in(key, i))))
    features.append(f)
    logits.append(lg)
  features = np.concatenate(features)[:e.fid_num_samples]
  logits = np.concatenate(logits)[:e.fid_num_samples]
  mu, sigma = metrics.feature_statistics(features)
  is_mean, is_std = metrics.inception_score(logits)
  fake = features[:len(reference["features"])]
  precision, recall = metrics.precision_recall_knn(reference["features"], fake, k=e.pr_k)
  f8, f1_8 = metrics.prd_scores(reference["features"], fake)
  report = {"fid": float(metrics.frechet_distance(mu, sigma, reference["mu"], reference["sigma"])),
            "inception_score": float(is_mean), "inception_score_std": float(is_std),
            "precision": float(precision), "recall": float(recall), "prd_f8": float(f8), "prd_f1_8": float(f1_8),
            "fid_num_samples": len(features), "fid_num_reference": int(reference["num_examples"]),
            "feature_net": net.name}
  report.update({f"feature_net_{k}": v for k, v in net.info.items()})
  return report


def _evaluate_images(config, exp, state, *, key):
  """Energies and bound terms on test images and generator samples; bits per dimension where
  the energy is time-conditioned; FID, IS and precision/recall; a grid of samples."""
  sample_key, bound_key, nll_key, quality_key = jax.random.split(key, 4)
  num_test = min(config.data.num_test, exp.dataset.num_test)
  n = min(config.eval.num_samples, num_test)
  # Bits per dimension need the whole test set; the energy statistics only its first n images.
  test_all = exp.dataset.test_images(num_test if exp.settings.time_conditioned_energy else n)
  test = test_all[:n]
  fake, z = _sample_generator(exp, state.generator.params, sample_key, n)
  report = {"step": int(state.step), **_bound_terms(exp, state, test, fake, z, bound_key)}
  if exp.settings.time_conditioned_energy:
    levels = exp.dataset.num_levels
    width = metrics.bin_width(levels) if levels else None
    report.update(_diffusion_nll(config, exp, state, test_all, key=nll_key, bin_width=width))
    report["bits_per_dim"] = float(metrics.bits_per_dim(report["diffusion_nll_bound"], test_all[0].size, width))
    report["bits_per_dim_examples"] = len(test_all)
  grid_params = state.generator_ema if state.generator_ema is not None else state.generator.params
  report.update(_sample_quality(config, exp, grid_params, key=quality_key))
  grid, _ = _sample_generator(exp, grid_params, sample_key, config.eval.grid_size)
  grid = np.asarray(grid)
  scale = max(1, 32 // grid.shape[1])  # small images are shown at least 32 pixels wide
  grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
  return report, plotting.image_grid(grid, value_range=(-1.0, 1.0))


def _evaluate_toy(config, exp, state, *, key):
  """Exact NLL and KL by adaptive quadrature, the bound sandwich, and density panels."""
  step = int(state.step)
  energy_fn = _energy_batch_fn(exp, state.energy.params)
  test_key, gen_key, bound_key = jax.random.split(key, 3)
  test = np.asarray(exp.dataset.sample(test_key, config.data.num_test))
  fake, z = _sample_generator(exp, state.generator.params, gen_key, config.eval.num_samples)

  # log Z on a grid that adapts to the model's mass, starting from the data's box.
  grid = metrics.adaptive_log_partition(energy_fn, test, tol=config.eval.quadrature_tol)
  report = {
      "step": step,
      "log_z": grid.log_z,
      "quadrature_error": grid.error_estimate,
      "quadrature_converged": bool(grid.converged),
      "quadrature_resolution": grid.resolution,
      **_bound_terms(exp, state, test, fake, z, bound_key),
  }
  report["nll"] = report["energy_data"] + grid.log_z  # mean E on the test set + log Z, exact
  report["sandwich_gap"] = report["nll"] - report["nll_lower_bound"]
  if exp.settings.time_conditioned_energy:
    report.update(_diffusion_nll(config, exp, state, test, key=bound_key))

  data_log_prob = exp.dataset.log_prob
  panels = []
  box_lo, box_hi = np.asarray(grid.lo), np.asarray(grid.hi)
  if data_log_prob is not None:
    # KL(p_data ‖ p_θ) only integrates where the data has mass: use the data density's own
    # adaptive grid, refined to the model grid's spacing where that is finer.
    data_grid = metrics.adaptive_log_partition(lambda x: -data_log_prob(x), test, tol=config.eval.quadrature_tol)
    data_width = np.max(np.subtract(data_grid.hi, data_grid.lo))
    model_spacing = np.max(np.subtract(grid.hi, grid.lo)) / grid.resolution
    kl_resolution = min(MAX_KL_RESOLUTION, max(data_grid.resolution,
                                               int(2 ** math.ceil(math.log2(data_width / model_spacing)))))
    report["kl_data_model"] = metrics.kl_data_model(data_log_prob, energy_fn, grid.log_z, data_grid.lo,
                                                    data_grid.hi, kl_resolution)
    box_lo, box_hi = np.asarray(data_grid.lo), np.asarray(data_grid.hi)
    report["test_entropy"] = float(-jnp.mean(data_log_prob(jnp.asarray(test))))
    xs, ys, data_logp = metrics.density_on_grid(lambda x: -data_log_prob(x), 0.0, box_lo, box_hi, 512)
    panels.append(("data density", data_logp))
  xs, ys, model_logp = metrics.density_on_grid(energy_fn, grid.log_z, box_lo, box_hi, 512)
  panels.append(("EBM density (T = 1)", model_logp))
  points = [("data samples", test[: len(fake)])] if data_log_prob is None else []
  points.append(("generator samples", np.asarray(fake)))

  image = plotting.plot_density_panels(
      None, xs=xs, ys=ys, panels=panels, points=points,
      title=f"{config.data.name} · {config.bounds.lower} + {config.bounds.upper} · step {step}")
  return report, image


def format_report(report: dict, workdir: str) -> str:
  """The short end-of-run summary printed to the terminal."""
  r = report
  lines = [f"step {r['step']}: evaluation of {workdir}"]
  if "nll" in r:  # 2-D data: exact by quadrature
    lines.append(f"  test NLL (exact)      {r['nll']:.4f} nats   log Z = {r['log_z']:.4f} "
                 f"(quadrature error {r['quadrature_error']:.1e}, {r['quadrature_resolution']}² grid)")
    if not r["quadrature_converged"]:
      lines.append("  WARNING: the quadrature did not converge; log Z and the NLL above are not reliable")
    if "kl_data_model" in r:
      lines.append(f"  KL(p_data ‖ p_θ)      {r['kl_data_model']:.4f} nats   (data entropy {r['test_entropy']:.4f})")
    lines.append(f"  sandwich              NLL lower bound {r['nll_lower_bound']:.4f} ≤ exact NLL {r['nll']:.4f}"
                 f"   (gap {r['sandwich_gap']:.4f})")
  else:
    lines.append(f"  NLL lower bound       {r['nll_lower_bound']:.4f} nats")
  if "diffusion_nll_bound" in r:
    bpd = f"   = {r['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in r else ""
    lines.append(f"  diffusion NLL bound   {r['diffusion_nll_bound']:.4f} nats{bpd}   (recon {r['diffusion_recon']:.3g}, "
                 f"prior {r['diffusion_prior']:.3g}, diffusion {r['diffusion_diffusion']:.4g})")
  if "fid" in r:
    lines.append(f"  FID {r['fid']:.3f}   IS {r['inception_score']:.3f} ± {r['inception_score_std']:.3f}   "
                 f"precision {r['precision']:.3f}   recall {r['recall']:.3f}   PRD F8 {r['prd_f8']:.3f} "
                 f"F1/8 {r['prd_f1_8']:.3f}   ({r['fid_num_samples']} samples vs {r['fid_num_reference']} "
                 f"{r['feature_net']} references)")
  lines += [f"    E_data[E] {r['energy_data']:.4f}   E_q[E] {r['energy_fake']:.4f}   "
            f"H_lb(q) {r['entropy_lower_bound']:.4f}   upper-bound penalty {r['upper_penalty']:.4g}",
            f"  plots in {os.path.join(workdir, 'plots')}, numbers in {os.path.join(workdir, 'eval')}"]
  return "\n".join(lines)


def _restore_state(config, workdir: str, step: int | None):
  """The experiment a config describes, and its saved state (latest step by default)."""
  from bdbounds import train  # train imports this module
  exp = train.build_experiment(config)
  # Replicated over this machine's devices, whatever layout the run was saved from.
  sharding = parallel.replicated(parallel.create_mesh())
  template = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                    jax.eval_shape(exp.init_state, jax.random.PRNGKey(0)))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  if ckpt.latest_step() is None:
    raise checkpointing.CheckpointNotFoundError(
        f"no checkpoint in {workdir}/checkpoints; train first with --mode=train")
  state, _ = ckpt.restore(template, step=step)
  ckpt.close()
  return exp, state


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with (its `config.json`)."""
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def _restore(workdir: str, step: int | None):
  return _restore_state(load_config(workdir), workdir, step)


def load_energy(workdir: str, step: int | None = None):
  """`x [N, ...] -> energies [N]` of the EBM saved in `workdir` (latest step by default)."""
  exp, state = _restore(workdir, step)
  return _energy_batch_fn(exp, state.energy.params)


def load_generator(workdir: str, step: int | None = None):
  """`(key, n) -> samples [n, ...]` from the generator saved in `workdir` (its EMA if kept)."""
  exp, state = _restore(workdir, step)
  params = state.generator_ema if state.generator_ema is not None else state.generator.params
  sample = jax.jit(lambda key, n: _sample_generator(exp, params, key, n)[0], static_argnums=1)
  return sample


def evaluate(config, workdir: str, step: int | None = None) -> dict:
  """`--mode=eval`: evaluate a saved step (latest by default) without touching training state."""
  from bdbounds import train
  exp, state = _restore_state(config, workdir, step)
  eval_key = train.create_keys(config.seed)["eval"]
  report = evaluate_state(config, exp, state, workdir, key=eval_key)
  print(format_report(report, workdir))
  return report
