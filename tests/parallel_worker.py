"""Child process of tests/test_parallel.py: a few toy training steps on this process's devices.

    python -m tests.parallel_worker OUT [--steps 12] [--batch 32] [--preset smoke] [--mesh_sizes 1,2,4]

Run from the repository root. It joins a multi-process job when JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID are set (`parallel.initialize_distributed`), and
writes `OUT.<process index>.npz` (with `--mesh_sizes`, one run on a mesh of the first n local
devices each, `OUT.mesh<n>.npz`): the parameters and metrics after the first and the last
step (`first_param:<path>`, `param:<path>`, `first_metric:<name>`, `metric:<name>`), the
topology, and every global batch, gathered whole (`batches`).
"""

import argparse

from bdbounds import parallel

if __name__ == "__main__":
  parallel.initialize_distributed()  # before anything else touches JAX

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from bdbounds import experiment, train  # noqa: E402
from configs import toy  # noqa: E402


def run(out: str, num_steps: int, batch_size: int, preset: str, mesh=None) -> None:
  config = toy.get_config(preset)
  with config.unlocked():
    config.training.num_steps = num_steps
    config.training.batch_size = batch_size
    # Adam steps every weight by about ±lr whatever its gradient's size, so a weight whose
    # gradient is at rounding level steps either way depending on how the batch is split, and
    # the comparison below could not be tight. The settings the tolerances were set for avoid
    # such weights: slow learning, no saturated generator unit, and the plain negative phase (with
    # importance weights the energy's output bias gets 1 − Σ softmax = rounding noise as gradient).
    config.training.energy_lr, config.training.generator_lr = 1e-4, 3e-4
    config.model.generator_input_scale = 2.0
    config.bounds.negative_phase = "samples"
    config.training.data_noise = 0.0
  exp = experiment.create_experiment(config)
  mesh = parallel.create_mesh() if mesh is None else mesh
  parallel.check_batch_size(batch_size, mesh)
  step_fn = train.make_step_fn(exp, mesh)
  keys = experiment.create_keys(config.seed)
  state = jax.device_put(exp.init_state(keys["init"]), parallel.replicated(mesh))
  batch_fn = train.make_batch_fn(exp, mesh)
  batches, arrays = [], {}
  for step in range(num_steps):
    batch = batch_fn(step)
    batches.append(multihost_utils.process_allgather(batch, tiled=True))
    state, metrics = step_fn(state, batch, keys["train"])
    if step == 0:  # one step from the same start: only the arithmetic's order differs
      arrays.update(_flat("first_", state, metrics))
  arrays.update(_flat("", state, metrics))
  np.savez(f"{out}.npz", **arrays, step=int(state.step),
           process_count=jax.process_count(), device_count=mesh.size,
           local_device_count=jax.local_device_count(), batches=np.stack(batches))


def _flat(prefix, state, metrics):
  """`{prefix}param:<path>` for every parameter, `{prefix}metric:<name>` for every metric."""
  players = {"energy": state.energy, "generator": state.generator, "critic": state.critic}
  params = jax.device_get({name: p.params for name, p in players.items() if p is not None})
  arrays = {f"{prefix}param:{jax.tree_util.keystr(path)}": np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  arrays.update({f"{prefix}metric:{k}": np.asarray(v) for k, v in jax.device_get(metrics).items()})
  return arrays


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("out", help="output prefix; each process writes OUT.<process index>.npz")
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--preset", default="smoke", help="configs/toy.py presets")
  parser.add_argument("--mesh_sizes", help="comma-separated: train on a mesh of the first n local devices, each")
  args = parser.parse_args()
  if args.mesh_sizes is None:
    run(f"{args.out}.{jax.process_index()}", args.steps, args.batch, args.preset)
  for n in map(int, filter(None, (args.mesh_sizes or "").split(","))):
    run(f"{args.out}.mesh{n}", args.steps, args.batch, args.preset,
        mesh=parallel.create_mesh(jax.local_devices()[:n]))


if __name__ == "__main__":
  main()
