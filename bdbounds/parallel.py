"""Data parallelism: one jitted step over a ("data",) mesh of every device, on one host or many.

Parameters are replicated, the batch is split along its example axis, and the compiler
inserts the gradient reductions. On several processes (hosts, or processes on one host),
`initialize_distributed` must run before anything touches JAX; `jax.devices()` then spans
every process, and each process feeds its own slice of the global batch
(`make_global_batch`). See docs/multihost.md.
"""

import logging
import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# The explicit launch protocol (launch/local_processes.sh, or any launcher of your own).
# JAX reads JAX_COORDINATOR_ADDRESS itself but not the other two, so they are passed on here.
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
  """Join a multi-process job if this process is part of one; return whether it did.

  Call it first, before any JAX computation or `jax.devices()`. The rule, in order:

  1. Explicit: `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and
     `JAX_PROCESS_ID` are all set -> `jax.distributed.initialize` with exactly these, no
     cluster auto-detection; setting only some of them is an error. `JAX_NUM_PROCESSES=1`
     is allowed (a one-process job with a coordinator).
  2. Slurm, inside an `srun` step of more than one task (`SLURM_STEP_NODELIST` set and
     `SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS`, above 1) -> `jax.distributed.initialize()`,
     which reads the rest from Slurm. A one-task job, or a batch script outside `srun`
     (where `SLURM_NTASKS` counts tasks that are not running), stays a single process:
     JAX's Slurm detection would pin it to one GPU (`SLURM_LOCALID`) for nothing.
  3. Open MPI (`mpirun`) with more than one rank (`OMPI_COMM_WORLD_SIZE` > 1) -> the same.
  4. A Cloud TPU VM -> `jax.distributed.initialize()`, which asks the TPU metadata for the
     workers; on a single-host VM that is a job of one process, which is harmless.
  5. Otherwise (a plain process, a one-task Slurm job) -> nothing: one process that sees
     every local device.

  An already initialised runtime is left alone. When the job spans several processes, CPU
  devices need a cross-process collectives implementation; gloo is chosen unless one is set.

  Args:
    environ: the environment to read (default `os.environ`); for tests.
  """
  if jax.distributed.is_initialized():
    return True
  request = distributed_request(os.environ if environ is None else environ)
  if request is None:
    return False
  source, kwargs = request
  from jax._src import xla_bridge  # no public way to ask whether a backend already exists
  if xla_bridge.backends_are_initialized():
    raise RuntimeError(f"this process is part of a multi-process job ({source}), but JAX was used before "
                       "parallel.initialize_distributed() could join it. Call it first, before any JAX "
                       "computation or jax.devices().")
  # Only the CPU backend reads this; without an implementation, cross-process CPU collectives fail.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.getLogger(__name__).info("process %d of %d (%s): %d local devices, %d in all", jax.process_index(),
               jax.process_count(), source, jax.local_device_count(), jax.device_count())
  return True


def distributed_request(environ: Mapping[str, str]) -> tuple[str, dict] | None:
  """`(source, kwargs for jax.distributed.initialize)` by the rule of `initialize_distributed`, or None."""
  explicit = {name: environ.get(name) for name in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)}
  if any(explicit.values()):
    missing = [name for name, value in explicit.items() if not value]
    if missing:
      raise ValueError(f"{', '.join(missing)} not set: a multi-process launch needs all of "
                       f"{COORDINATOR_ENV} (host:port of process 0), {NUM_PROCESSES_ENV} and "
                       f"{PROCESS_ID_ENV} (0 .. {NUM_PROCESSES_ENV}-1), or none of them for a single process.")
    num_processes = _int_env(environ, NUM_PROCESSES_ENV)
    process_id = _int_env(environ, PROCESS_ID_ENV)
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"{PROCESS_ID_ENV}={process_id} must be in 0 .. {NUM_PROCESSES_ENV}-1 "
                       f"and {NUM_PROCESSES_ENV}={num_processes} at least 1.")
    return "explicit", dict(coordinator_address=explicit[COORDINATOR_ENV], num_processes=num_processes,
                            process_id=process_id, cluster_detection_method="deactivate")
  if "SLURM_STEP_NODELIST" in environ:
    tasks = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
    if int(tasks) > 1:
      return "slurm", {}
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "open mpi", {}
  if _on_cloud_tpu_vm():
    return "cloud tpu", {}
  return None


def _int_env(environ, name):
  try:
    return int(environ[name])
  except ValueError:
    raise ValueError(f"{name}={environ[name]!r} must be an integer") from None


def _on_cloud_tpu_vm() -> bool:
  # Set when `import jax` finds libtpu and TPU chips; JAX has no public equivalent.
  try:
    from jax._src import cloud_tpu_init
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def create_mesh(devices=None) -> Mesh:
  """A 1-D ("data",) mesh of every device of every process (or of `devices`).

  Devices are ordered by process, so each process holds one contiguous block of the batch
  and can feed it from its own slice of the data.
  """
  devices = sorted(jax.devices() if devices is None else devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded_along(mesh: Mesh, axis: int) -> NamedSharding:
  """Split dimension `axis` (the example axis) over the data axis of the mesh."""
  return NamedSharding(mesh, P(*([None] * axis), "data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over every device of every process."""
  devices = mesh.size
  if batch_size >= devices and batch_size % devices == 0:
    return
  processes = jax.process_count()
  where = (f"{devices} devices ({processes} processes × {devices // processes} local devices)"
           if processes > 1 else f"{devices} devices")
  below, above = batch_size // devices * devices, (batch_size // devices + 1) * devices
  suggestion = f"{below} or {above}" if below else f"{above}"
  raise ValueError(f"training.batch_size={batch_size} is the global batch and must be divisible by the "
                   f"{where}; use a multiple of {devices}, e.g. --config.training.batch_size={suggestion}")


def process_batch_index(mesh: Mesh, shape: tuple[int, ...], axis: int) -> tuple[slice, ...]:
  """The index of this process's examples in a global batch of `shape` split along `axis`."""
  spans = {index[axis].indices(shape[axis])[:2]
           for index in sharded_along(mesh, axis).addressable_devices_indices_map(shape).values()}
  start, stop = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError("this process's devices do not hold one contiguous block of the batch; build the "
                     "mesh with parallel.create_mesh, which orders devices by process")
  return (slice(None),) * axis + (slice(start, stop),)


def make_global_batch(local_batch, mesh: Mesh, axis: int, global_shape: tuple[int, ...]) -> jax.Array:
  """One global array, split along `axis`, from this process's slice of it.

  `local_batch` holds the examples `process_batch_index` names (all of them on one
  process); every process calls this with its own slice, and the result is the same
  global array everywhere.
  """
  return jax.make_array_from_process_local_data(sharded_along(mesh, axis), local_batch, global_shape)


def shard_global_batch(batch, mesh: Mesh, axis: int) -> jax.Array:
  """Split a whole global batch, identical on every process, along `axis` over the mesh.

  For data that every process can generate in full (the toy samplers, from the key and the
  step): each process contributes only its own slice, so the result equals the batch that
  a single process would use. A loader that reads only its own slice calls
  `make_global_batch` directly.
  """
  if jax.process_count() == 1:  # it holds the whole batch: no host round trip
    return make_global_batch(batch, mesh, axis, batch.shape)
  local = np.asarray(batch)[process_batch_index(mesh, batch.shape, axis)]
  return make_global_batch(local, mesh, axis, batch.shape)


def make_shard_constraint(mesh: Mesh):
  """Inside jit: pin a per-example array's leading axis to the data axis."""
  sharding = sharded_along(mesh, 0)
  return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def jit_train_step(train_step, mesh: Mesh):
  """`(state, batch [steps, B, ...], key) -> (state, metrics)`, state donated and replicated."""
  repl = replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharded_along(mesh, 1), repl),
                 out_shardings=(repl, repl), donate_argnums=0)
