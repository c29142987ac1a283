"""The report's headline bounds, assembled from what the evaluators measured.

  nll_upper_bound   the best upper bound the evaluation has: certified (2-D: the χ² bound on log Z)
                    over conditional (the game's, given its assumption) over an estimate
  upper_bound_status, upper_bound_assumption    certified | conditional | estimate, and one line on why
  lower_bound_status, lower_bound_assumption    the same for `nll_lower_bound`
  kl_generator_model, lsi_constant_implied      where q's density and log Z are both known: the exact
                    KL(q ‖ p_θ) and C* = 2·KL/FI, the smallest constant for which the LSI bound holds
  lsi_constant_ruled_out  2-D: the constant training assumes is below the Poincaré lower bound on any
                    LSI constant of p_θ (`lsi_constant_lower`), so its KL bound provably need not hold
  game_upper_bound_held   2-D: exact NLL ≤ the game's upper bound
"""

DIFFUSION_ASSUMPTION = ("bounds the NLL of the diffusion model E(x, t) defines, which is the EBM's only where "
                        "E(·, t > 0) are the diffusions of E(·, 0)")


def lower_bound_status(settings, fold_fraction=None) -> tuple[str, str]:
  """`(status, assumption)` of the entropy lower bound, hence of `nll_lower_bound`."""
  if settings.lower == "mutual_info":
    if settings.mi_estimator == "dv":
      return "estimate", "DV's minibatch plug-in over-states I(x; z) (docs/bounds.md §3.5): not a bound"
    return "certified", f"Monte-Carlo only: {settings.mi_estimator} bounds I(x; z) from below for any critic"
  if fold_fraction:
    return "estimate", (f"G folds at {fold_fraction:.1%} of latents, where the change of variables over-states "
                        "the entropy: not a bound")
  if settings.lower == "jacobian_exact":
    return "conditional", "G injective (det J kept its sign over the samples where d = D)"
  return "conditional", "G injective and the Ritz values converged (unconverged ones over-state the bound)"


def assemble(report: dict, settings) -> dict:
  """The fields above from `report` (the evaluators' merged parts)."""
  r, out = report, {}
  if "nll_lower_bound" in r:
    out["lower_bound_status"], out["lower_bound_assumption"] = lower_bound_status(settings, r.get("fold_fraction"))
  if settings.upper == "diffusion" and "diffusion_nll_bound" in r:
    out["game_nll_upper_bound"] = r["diffusion_nll_bound"]
    out["game_nll_upper_bound_stderr"] = r["diffusion_nll_bound_stderr"]
    out["game_upper_bound_status"], out["game_upper_bound_assumption"] = "conditional", DIFFUSION_ASSUMPTION
    if "nll" in r:
      out["diffusion_gap"] = r["diffusion_nll_bound"] - r["nll"]
  r = {**r, **out}
  if "log_z" in r and "generator_cross_entropy" in r:
    kl = out["kl_generator_model"] = r["generator_cross_entropy"] + r["log_z"]
    out["lsi_constant_implied"] = 2 * max(kl, 0.0) / r["relative_fisher"]
    out["latent_lsi_constant_implied"] = 2 * max(kl, 0.0) / r["latent_relative_fisher"]
    if kl < -3 * r["generator_cross_entropy_stderr"] and out.get("lower_bound_status") != "estimate":
      # A KL is never negative: the change-of-variables density under-states q, so G is not injective
      # (it can cover a region twice keeping the sign of det J, which the fold fraction cannot see).
      out["lower_bound_status"], out["lower_bound_assumption"] = "estimate", (
          f"G is not injective: its change-of-variables density gives KL(q ‖ p_θ) = {kl:.3f} < 0: not a bound")
  if "lsi_constant_lower" in r and settings.upper in ("score_matching", "r1"):  # ambient constants only
    out["lsi_constant_ruled_out"] = bool(r["lsi_constant_trained"] < r["lsi_constant_lower"])
  if "nll_upper_bound_certified" in r:
    out["nll_upper_bound"], out["nll_upper_bound_stderr"] = r["nll_upper_bound_certified"], r[
        "nll_upper_bound_certified_stderr"]
    out["upper_bound_status"], out["upper_bound_assumption"] = "certified", r["certified_assumption"]
  elif "game_nll_upper_bound" in r:
    out["nll_upper_bound"], out["nll_upper_bound_stderr"] = r["game_nll_upper_bound"], r[
        "game_nll_upper_bound_stderr"]
    out["upper_bound_status"], out["upper_bound_assumption"] = (r["game_upper_bound_status"],
                                                                r["game_upper_bound_assumption"])
  if "nll" in r and "game_nll_upper_bound" in r:
    out["game_upper_bound_held"] = bool(r["nll"] <= r["game_nll_upper_bound"])
  if "nll" in r and "nll_lower_bound" in r:
    out["sandwich_gap"] = r["nll"] - r["nll_lower_bound"]
  return out
