"""The short summary of an evaluation printed to the terminal."""

import os


def _pm(r: dict, name: str, digits: int = 4) -> str:
  """`value ± stderr` where the report has a standard error for it."""
  stderr = r.get(f"{name}_stderr")
  return f"{r[name]:.{digits}f}" + (f" ± {stderr:.1e}" if stderr is not None else "")


def format_report(report: dict, workdir: str) -> str:
  r = report
  lines = [f"step {r['step']}: evaluation of {workdir}"]
  if "nll" in r:  # 2-D data: exact by quadrature
    lines.append(f"  test NLL (exact)      {_pm(r, 'nll')} nats   log Z = {r['log_z']:.4f} "
                 f"(quadrature error {r['quadrature_error']:.1e}, {r['quadrature_resolution']}² grid)")
    if not r["quadrature_converged"]:
      lines.append(f"  WARNING: the quadrature did not converge ({r.get('quadrature_reason') or 'no reason given'}); "
                   "log Z and the NLL above are not reliable")
    if "kl_data_model" in r:
      lines.append(f"  KL(p_data ‖ p_θ)      {r['kl_data_model']:.4f} nats   (data entropy {r['test_entropy']:.4f})")
    if "nll_lower_bound" in r:
      lines.append(f"  sandwich              NLL lower bound {_pm(r, 'nll_lower_bound')} ≤ exact NLL {r['nll']:.4f}"
                   f"   (gap {r['sandwich_gap']:.4f})")
  elif "nll_lower_bound" in r:
    lines.append(f"  NLL lower bound       {_pm(r, 'nll_lower_bound')} nats")
  if r.get("lower_bound_status") == "estimate":
    lines.append(f"  NOTE: the NLL lower bound is an estimate here: {r['lower_bound_assumption']}")
  if "nll_upper_bound" in r:
    lines.append(f"  NLL upper bound       {_pm(r, 'nll_upper_bound')} nats   {r['upper_bound_status']}: "
                 f"{r['upper_bound_assumption']}")
  if "game_nll_upper_bound" in r and r.get("upper_bound_status") == "certified":
    held = {True: "holds", False: "FAILS"}.get(r.get("game_upper_bound_held"), "")
    lines.append(f"  the game's upper bound {_pm(r, 'game_nll_upper_bound')} nats {held}   "
                 f"{r['game_upper_bound_status']}: {r['game_upper_bound_assumption']}")
  if "lsi_constant_implied" in r and "lsi_constant_trained" in r:
    lines.append(f"  log-Sobolev constant  trained C = {r['lsi_constant_trained']:.3g}   needed C* = 2·KL/FI = "
                 f"{r['lsi_constant_implied']:.3g} (latent {r['latent_lsi_constant_implied']:.3g})   "
                 f"any valid C ≥ {r['lsi_constant_lower']:.3g} (Poincaré)   "
                 f"KL(q ‖ p_θ) {r['kl_generator_model']:.4f}")
  if "diffusion_nll_bound" in r:
    bpd = f"   = {r['bits_per_dim']:.4f} bits/dim" if "bits_per_dim" in r else ""
    lines.append(f"  diffusion NLL bound   {_pm(r, 'diffusion_nll_bound')} nats{bpd}   (recon "
                 f"{r['diffusion_recon']:.3g}, prior {r['diffusion_prior']:.3g}, "
                 f"diffusion {r['diffusion_diffusion']:.4g})")
  if "fid" in r:
    lines.append(f"  FID {r['fid']:.3f}   IS {r['inception_score']:.3f} ± {r['inception_score_std']:.3f}   "
                 f"precision {r['precision']:.3f}   recall {r['recall']:.3f}   PRD F8 {r['prd_f8']:.3f} "
                 f"F1/8 {r['prd_f1_8']:.3f}   ({r['fid_num_samples']} samples vs {r['fid_num_reference']} "
                 f"{r['feature_net']} references)")
  if "energy_data" in r:
    penalty = f"   upper-bound penalty {r['upper_penalty']:.4g}" if "upper_penalty" in r else ""
    lines.append(f"    E_data[E] {r['energy_data']:.4f}   E_q[E] {r['energy_fake']:.4f}   "
                 f"H_lb(q) {r['entropy_lower_bound']:.4f}{penalty}")
  lines.append(f"  plots in {os.path.join(workdir, 'plots')}, numbers in {os.path.join(workdir, 'eval')}")
  return "\n".join(lines)
