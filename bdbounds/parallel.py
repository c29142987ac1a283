"""Data parallelism: one jitted step over a ("data",) mesh of every device.

Parameters are replicated, the batch is split along its example axis, and the compiler
inserts the gradient reductions. On several hosts, call `jax.distributed.initialize()`
first; `jax.devices()` then spans them all.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def create_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded_along(mesh: Mesh, axis: int) -> NamedSharding:
  """Split dimension `axis` (the example axis) over the data axis of the mesh."""
  return NamedSharding(mesh, P(*([None] * axis), "data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ValueError(f"training.batch_size={batch_size} must be divisible by the {mesh.size} devices; "
                     f"use a multiple of {mesh.size}")


def make_shard_constraint(mesh: Mesh):
  """Inside jit: pin a per-example array's leading axis to the data axis."""
  sharding = sharded_along(mesh, 0)
  return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def jit_train_step(train_step, mesh: Mesh):
  """`(state, batch [steps, B, ...], key) -> (state, metrics)`, state donated and replicated."""
  repl = replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharded_along(mesh, 1), repl),
                 out_shardings=(repl, repl), donate_argnums=0)
