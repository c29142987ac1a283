"""Accuracy and cost of the Jacobian entropy bound on a DCGAN-sized generator.

Builds a random, BatchNorm-free DCGAN-style generator in plain JAX

    z [128] -> dense -> 4x4x256 -> 3 x (2x upsample, conv, ReLU) -> 3x3 conv -> tanh -> 32x32x3

and compares the matrix-free smallest-singular-value solvers behind `bounds.jtj_eigs` and
`bounds.logdet_lower_bound` (Lanczos and LOBPCG, k = 1, float32 as in training) against a
dense float64 oracle (jacfwd + SVD). Prints a Markdown table; see `--help`.

    python bench/jacobian_bound.py [--seed 0] [--num-latents 1] [--output table.md]

The error columns are deterministic given the seed; the timings are wall-clock and depend on
the machine and its load. On a small shared CPU, multithreaded OpenBLAS can make the dense
SVD many times slower than it should be; `OPENBLAS_NUM_THREADS=1` avoids that.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds import bounds

sys.path.insert(0, os.path.dirname(__file__))  # for `stepping`
from stepping import median_seconds  # noqa: E402

LATENT_DIM = 128
BASE_CHANNELS = 256
STAGE_CHANNELS = (128, 64, 32)  # output channels of the three upsampling stages
NUM_ITERS = (2, 5, 10, 20, 40)
METHODS = ("lanczos", "lobpcg")
CONV_DIMS = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------- generator

def init_generator(key, *, upsample="nearest", latent_dim=LATENT_DIM, dtype=jnp.float32):
  """He-normal init for the ReLU layers, LeCun-normal for the tanh output, zero biases.

  `upsample="nearest"`: 2x nearest-neighbour repeat then a 3x3 conv. `"transposed"`: a 4x4
  stride-2 transposed conv (its effective fan-in is a quarter of the kernel's).
  """
  keys = jax.random.split(key, len(STAGE_CHANNELS) + 2)
  width = 4 * 4 * BASE_CHANNELS
  params = {"dense": (jax.random.normal(keys[0], (latent_dim, width), dtype)
                      * np.sqrt(2.0 / latent_dim), jnp.zeros((width,), dtype))}
  ksize, fan_scale = (3, 1.0) if upsample == "nearest" else (4, 0.25)
  c_in = BASE_CHANNELS
  for i, c_out in enumerate(STAGE_CHANNELS):
    fan_in = ksize * ksize * c_in * fan_scale
    w = jax.random.normal(keys[i + 1], (ksize, ksize, c_in, c_out), dtype) * np.sqrt(2.0 / fan_in)
    params[f"stage{i}"] = (w, jnp.zeros((c_out,), dtype))
    c_in = c_out
  w = jax.random.normal(keys[-1], (3, 3, c_in, 3), dtype) * np.sqrt(1.0 / (9 * c_in))
  params["out"] = (w, jnp.zeros((3,), dtype))
  return params


def generator(params, *, upsample="nearest"):
  """Returns `fn: z [d] -> image [32, 32, 3]` with the parameters closed over."""
  def fn(z):
    w, b = params["dense"]
    h = jax.nn.relu(z @ w + b).reshape(1, 4, 4, BASE_CHANNELS)
    for i in range(len(STAGE_CHANNELS)):
      w, b = params[f"stage{i}"]
      if upsample == "nearest":
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=CONV_DIMS)
      else:
        h = jax.lax.conv_transpose(h, w, (2, 2), "SAME", dimension_numbers=CONV_DIMS)
      h = jax.nn.relu(h + b)
    w, b = params["out"]
    h = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=CONV_DIMS)
    return jnp.tanh(h + b)[0]
  return fn


# --------------------------------------------------------------------------- helpers

def time_ms(fn, *args, repeats):
  """Median wall time of a jitted call in ms; the first (compiling, warm-up) call is excluded."""
  return 1e3 * median_seconds(fn, *args, repeats=repeats)


def rel(estimate, reference):
  """Signed relative error (estimate - reference) / |reference|."""
  return (float(estimate) - float(reference)) / abs(float(reference))


def dense_reference(params, z, upsample):
  """float64 oracle for one latent: singular values of J (descending) and ½ log det JᵀJ."""
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
    z64 = jnp.asarray(np.asarray(z), jnp.float64)
    jac = jax.jit(lambda p, z: jax.jacfwd(
        lambda z: jnp.ravel(generator(p, upsample=upsample)(z)))(z))
    s = np.linalg.svd(np.asarray(jac(p64, z64)), compute_uv=False)
    half_logdet = float(jax.jit(lambda p, z: bounds.half_logdet_exact(
        generator(p, upsample=upsample), z))(p64, z64))
  return s, half_logdet


def fmt_err(x):
  return f"{x:+.2e}"


def fmt_abs(x):
  return f"{x:+.3g}"


# --------------------------------------------------------------------------- benchmark

def run(args):
  d = LATENT_DIM
  root = jax.random.PRNGKey(args.seed)
  param_key, latent_key, solver_key = jax.random.split(root, 3)
  params = init_generator(param_key, upsample=args.upsample)
  latents = jax.random.normal(latent_key, (args.num_latents, d), jnp.float32)
  keys = jax.random.split(solver_key, args.num_latents)
  up = args.upsample

  # Reference values, per latent, in float64.
  refs = [dense_reference(params, z, up) for z in latents]
  s_min = [s[-1] for s, _ in refs]
  d_log_smin = [d * np.log(s[-1]) for s, _ in refs]
  exact = [h for _, h in refs]
  svd_vs_slogdet = max(abs(np.sum(np.log(s)) - h) / abs(h) for s, h in refs)

  rows = []

  def mean(xs):
    return float(np.mean(xs))

  ref_bound, ref_exact = mean(d_log_smin), mean(exact)

  def bound_errors(values):
    """Errors of the latent-averaged bound (the Monte Carlo estimate of E_z that enters H)."""
    m = mean(values)
    return fmt_err(rel(m, ref_bound)), fmt_abs(m - ref_bound), fmt_err(rel(m, ref_exact))

  # Matrix-free solvers in float32.
  for method in METHODS:
    for n in NUM_ITERS:
      eigs = jax.jit(lambda p, z, key, n=n, m=method: bounds.jtj_eigs(
          generator(p, upsample=up), z, key=key, num_iters=n, k=1, method=m))
      bound = jax.jit(lambda p, z, key, n=n, m=method: bounds.logdet_lower_bound(
          generator(p, upsample=up), z, key=key, num_iters=n, k=1, method=m))
      e_s, vals, resid = [], [], []
      for i, (z, key) in enumerate(zip(latents, keys)):
        res = eigs(params, z, key)
        b = bound(params, z, key)
        e_s.append(rel(np.sqrt(np.float64(res.eigvals[0])), s_min[i]))
        vals.append(float(b))
        resid.append(float(res.residuals[0]))
      ms = time_ms(bound, params, latents[0], keys[0], repeats=args.repeats)
      rows.append((method, str(n), fmt_err(mean(e_s)), *bound_errors(vals),
                   f"{mean(resid):.1e}", f"{ms:.1f}"))

  # Dense float32 oracles: what the solvers are competing against.
  dense_smin = jax.jit(lambda p, z: jnp.linalg.svd(jax.jacfwd(
      lambda z: jnp.ravel(generator(p, upsample=up)(z)))(z), compute_uv=False)[-1])
  dense_exact = jax.jit(lambda p, z: bounds.half_logdet_exact(generator(p, upsample=up), z))
  e_s, vals, halves = [], [], []
  for i, z in enumerate(latents):
    s32 = np.float64(dense_smin(params, z))
    e_s.append(rel(s32, s_min[i]))
    vals.append(d * np.log(s32))
    halves.append(float(dense_exact(params, z)))
  ms_svd = time_ms(dense_smin, params, latents[0], repeats=args.repeats)
  ms_exact = time_ms(dense_exact, params, latents[0], repeats=args.repeats)
  rows.append(("dense: jacfwd + SVD, d·log s_min", "—", fmt_err(mean(e_s)), *bound_errors(vals),
               "—", f"{ms_svd:.1f}"))
  rows.append(("dense: `half_logdet_exact`", "—", "—", "—", "—",
               fmt_err(rel(mean(halves), ref_exact)), "—", f"{ms_exact:.1f}"))

  s_all = np.stack([s for s, _ in refs])
  header = [
      f"Jacobian bound, DCGAN-sized generator ({up} upsampling): d = {d}, D = 32·32·3 = 3072, "
      f"k = 1, float32, seed {args.seed}, {args.num_latents} latent(s); "
      f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
      f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}.",
      "",
      "Reference (float64 dense Jacobian, mean over latents): "
      f"s_min = {s_all[:, -1].mean():.4g}, s_2 = {s_all[:, -2].mean():.4g}, "
      f"s_max = {s_all[:, 0].mean():.4g}, "
      f"d·log s_min = {mean(d_log_smin):.4g}, ½ log det JᵀJ = {mean(exact):.4g} "
      f"(max rel. diff SVD Σ log s vs `half_logdet_exact`: {svd_vs_slogdet:.1e}).",
      "",
      "Errors are signed, (estimate − reference) / |reference|, with float64 references. "
      "s_min errors and residuals are means of per-latent values; the bound columns compare the "
      "latent-averaged bound with the latent-averaged reference (the estimate of E_z that enters "
      "the entropy):",
      "",
      "* **s_min**: `sqrt(jtj_eigs(...).eigvals[0])` vs the smallest singular value of the "
      "dense Jacobian. Ritz values are upper bounds, so an unconverged solve gives > 0.",
      "* **bound vs d·log s_min**: `logdet_lower_bound` vs its converged value d·log s_min "
      "(solver error only; > 0 means the bound is over-stated). Since the reference is "
      "d·log s_min, this is about (rel. err of s_min) / |log s_min|, which is large when "
      "s_min is near 1; the absolute error in nats, bound − d·log s_min, is given too.",
      "* **bound vs ½ log det**: `logdet_lower_bound` vs the exact ½ log det JᵀJ. Once converged "
      "this is < 0 and measures the looseness of the bound itself, not solver error.",
      "* **Ritz residual**: ‖JᵀJ v − θ v‖ / θ for the returned pair.",
      "* **num_iters**: Lanczos applies JᵀJ num_iters times, LOBPCG num_iters + 1 times (the "
      "starting block); both add one application for the residual, and the bound one jvp.",
      "* **ms per call**: `jax.jit` of `logdet_lower_bound` (solver rows) or of the dense "
      f"oracle, on one latent; warm-up call excluded, median of {args.repeats} runs, "
      "`block_until_ready`.",
      "* Dense rows are computed in float32, so their error columns show the float32 floor "
      "(the SVD row's last error column is the looseness of the converged bound).",
      "",
  ]
  columns = ["method", "num_iters", "rel. err of s_min",
             "rel. err of bound (vs d·log s_min dense)", "abs. err of bound (nats)",
             "rel. err vs ½ log det (exact)", "Ritz residual", "ms per call (jit, warm)"]
  table = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 6) + "|"]
  table += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(header + table) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seed", type=int, default=0,
                      help="seed for parameters, latents and solver starts")
  parser.add_argument("--num-latents", type=int, default=1,
                      help="number of latents z; results are averaged over them")
  parser.add_argument("--upsample", choices=["nearest", "transposed"], default="nearest",
                      help="nearest 2x repeat + 3x3 conv, or 4x4 stride-2 transposed conv")
  parser.add_argument("--repeats", type=int, default=7, help="timed runs per row (median; >= 5)")
  parser.add_argument("--output", default=None,
                      help="optional path to also write the Markdown table")
  args = parser.parse_args()
  if args.num_latents < 1 or args.repeats < 5:
    parser.error("need --num-latents >= 1 and --repeats >= 5")
  text = run(args)
  print(text, end="")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  main()
