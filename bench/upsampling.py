"""Cost of the three upsampling modes of the DCGAN generator on the CPU.

    python bench/upsampling.py                          # 32×32×3, batch 64, latent 128, width 64
    python bench/upsampling.py --repeats 20 --modes nearest transpose

For each mode of `DCGANDecoder.upsample`, the median wall time (jitted, warm, with
`block_until_ready`) of (a) the forward pass of a batch, (b) forward + backward to the
parameters (the weight gradients a training step needs), and (c) one Jacobian-vector and one
vector-Jacobian product per example (`jax.jvp` / `jax.vjp` under `jax.vmap`), the products
behind the Jacobian entropy bound. XLA:CPU is known to compute the weight gradient of a
transposed convolution slowly; (b) shows whether it matters here.

The timed calls take turns across modes and measurements, so a neighbour's load on a shared
machine spreads over every column instead of landing on one mode.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from bdbounds.models.images import UPSAMPLING_MODES, DCGANDecoder

MEASUREMENTS = ("forward", "weight_grads", "jvp_vjp")


def make_calls(mode: str, args) -> tuple[int, dict]:
  """Parameter count, and the three measured computations as argument-free calls."""
  decoder = DCGANDecoder(image_shape=(args.image_size, args.image_size, 3), width=args.width, upsample=mode)
  z_key, u_key, v_key, init_key = jax.random.split(jax.random.PRNGKey(args.seed), 4)
  z = jax.random.normal(z_key, (args.batch, args.latent_dim))
  params = decoder.init(init_key, z)
  u = jax.random.normal(u_key, z.shape)
  v = jax.random.normal(v_key, (args.batch, args.image_size, args.image_size, 3))

  forward = jax.jit(decoder.apply)
  weight_grads = jax.jit(jax.grad(lambda params, z: jnp.mean(jnp.square(decoder.apply(params, z)))))

  @jax.jit
  def jvp_and_vjp(params, z, u, v):
    fn = lambda z: decoder.apply(params, z)
    def one(z, u, v):
      return jax.jvp(fn, (z,), (u,))[1], jax.vjp(fn, z)[1](v)[0]
    return jax.vmap(one)(z, u, v)

  calls = {"forward": lambda: forward(params, z), "weight_grads": lambda: weight_grads(params, z),
           "jvp_vjp": lambda: jvp_and_vjp(params, z, u, v)}
  return sum(p.size for p in jax.tree_util.tree_leaves(params)), calls


def seconds(call) -> float:
  start = time.perf_counter()
  jax.block_until_ready(call())
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--modes", nargs="*", default=list(UPSAMPLING_MODES), choices=UPSAMPLING_MODES)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--latent-dim", type=int, default=128)
  parser.add_argument("--width", type=int, default=64, help="base width w (the last stage has w channels)")
  parser.add_argument("--image-size", type=int, default=32, help="side of the square RGB image, 4·2^k")
  parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  sizes, calls, first_call = {}, {}, {}
  for mode in args.modes:
    sizes[mode], calls[mode] = make_calls(mode, args)
    first_call[mode] = sum(seconds(call) for call in calls[mode].values())  # compiles
  times = {(mode, name): [] for mode in args.modes for name in MEASUREMENTS}
  for _ in range(args.repeats):
    for mode in args.modes:
      for name in MEASUREMENTS:
        times[mode, name].append(seconds(calls[mode][name]))

  print(f"devices: {jax.devices()}  DCGAN generator {args.image_size}×{args.image_size}×3, "
        f"batch {args.batch}, latent {args.latent_dim}, width {args.width}, median of {args.repeats}\n")
  print("| upsampling | parameters | forward (ms) | forward+backward to parameters (ms) "
        "| jvp + vjp per example (ms) | first calls, compile included (s) |\n"
        "|---|---:|---:|---:|---:|---:|")
  for mode in args.modes:
    ms = [1e3 * float(np.median(times[mode, name])) for name in MEASUREMENTS]
    print(f"| {mode} | {sizes[mode]:,} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {first_call[mode]:.1f} |")


if __name__ == "__main__":
  main()
