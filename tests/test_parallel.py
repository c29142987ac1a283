"""Data parallelism: every split of the batch, over devices and over processes, trains like one device.

The device count is fixed when JAX starts, so the runs happen in child processes
(`tests/parallel_worker.py`, or the real trainer) with `JAX_PLATFORMS=cpu` and
`--xla_force_host_platform_device_count=N`; several processes meet over loopback.

Tolerances. Splitting the batch changes only the order of float32 arithmetic: each device
reduces its slice and the partial sums are then combined, and XLA compiles the per-device
program for a different shape. One step from the same start therefore agrees to about one
float32 rounding (measured: parameters within 1.2e-7, metrics within 5e-5 relative, the latter
on the latent-Fisher penalty, a mean of large per-example terms). Over several steps Adam
with β1 = 0 divides each gradient coordinate by its own magnitude, so a coordinate whose
gradient is near zero can move by up to a learning rate on a rounding change; after 12 steps
the parameters differ by up to 5.4e-5 (measured), against a possible 12 × lr = 1.2e-3 (energy)
and 3.6e-3 (generator), and the metrics by up to 1.5e-3 relative (the generator loss, a
difference of terms). A wrong batch split shows at the first step, far outside these bounds;
the gathered global batches themselves must match one device's exactly. The same 4 devices
as one process or two processes differ only in the order of the 4-term sums (measured: 1.6e-7
in the parameters after 12 steps). Two processes of one device each run the same program and
the same two-term sums as one process with two devices, so they agree bit for bit.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bdbounds import experiment, parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600

# After one step: a rounding or two. After the run: well under a learning rate.
FIRST_STEP = dict(params=dict(rtol=0, atol=1e-6), metrics=dict(rtol=5e-4, atol=1e-6))
LAST_STEP = dict(params=dict(rtol=0, atol=5e-4), metrics=dict(rtol=1e-2, atol=1e-3))
# The same four devices in one process or two: roundings only, accumulated over the run.
SAME_DEVICES = dict(params=dict(rtol=0, atol=1e-5), metrics=dict(rtol=5e-4, atol=1e-5))


# The detection rule of parallel.initialize_distributed.

@pytest.mark.parametrize("environ", [
    {},
    {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "node1", "SLURM_STEP_NUM_TASKS": "1",
     "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
    # The batch script itself, outside srun: SLURM_NTASKS counts tasks that are not running.
    {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
    {"OMPI_COMM_WORLD_SIZE": "1"},
], ids=["plain", "slurm-one-task", "slurm-batch-script", "mpirun-one-rank"])
def test_a_single_process_stays_single(environ):
  assert parallel.distributed_request(environ) is None
  assert parallel.initialize_distributed(environ) is False


def test_several_tasks_of_a_launcher_join_one_job():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_STEP_NUM_TASKS": "8",
           "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
  assert parallel.distributed_request(slurm) == ("slurm", {})
  assert parallel.distributed_request({"OMPI_COMM_WORLD_SIZE": "2"}) == ("open mpi", {})
  explicit = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  source, kwargs = parallel.distributed_request({**slurm, **explicit})  # explicit wins, no auto-detection
  assert source == "explicit"
  assert kwargs == dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
                        cluster_detection_method="deactivate")


@pytest.mark.parametrize("environ, match", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID not set"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS not set"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "must be an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"must be in 0 \.\. "),
])
def test_an_incomplete_launch_is_explained(environ, match):
  with pytest.raises(ValueError, match=match):
    parallel.distributed_request(environ)


def test_joining_after_jax_started_is_refused():
  jax.devices()  # this process has started its backend
  environ = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
  with pytest.raises(RuntimeError, match="Call it first"):
    parallel.initialize_distributed(environ)


def test_batch_size_errors_name_the_devices_and_processes(monkeypatch):
  mesh = type("Mesh", (), {"size": 8})()
  parallel.check_batch_size(32, mesh)
  with pytest.raises(ValueError, match=r"divisible by the 8 devices; .*batch_size=24 or 32"):
    parallel.check_batch_size(30, mesh)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match=r"8 devices \(2 processes × 4 local devices\).*batch_size=8$"):
    parallel.check_batch_size(4, mesh)


def test_a_whole_batch_on_one_process_is_placed_as_is():
  mesh = parallel.create_mesh()
  batch = jax.random.normal(jax.random.PRNGKey(0), (2, 4 * mesh.size, 2))
  placed = parallel.shard_global_batch(batch, mesh, axis=1)
  assert placed.sharding == parallel.sharded_along(mesh, 1)
  np.testing.assert_array_equal(placed, batch)
  assert parallel.process_batch_index(mesh, batch.shape, 1) == (slice(None), slice(0, batch.shape[1]))


# Training in child processes.

def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(devices: int, process_id: int | None = None, num_processes: int = 1, port: int = 0) -> dict:
  # Drop whatever would make a child join someone else's job (this suite may run under srun).
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                              "JAX_LOCAL_DEVICE_IDS"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  if process_id is not None:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
  return env


def run_children(tmp_path, children: dict[str, tuple[list[str], dict]]) -> None:
  """Run every `name: (argv, env)` at once, in the repository root; fail with the stderr of any that fails.

  Children of one job wait for each other, so the first failure stops them all.
  """
  procs = {}
  for name, (argv, env) in children.items():
    log = open(tmp_path / f"{name}.log", "w")
    procs[name] = (subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log, argv)
  deadline = time.monotonic() + TIMEOUT_S
  failed = None
  while failed is None and any(p.poll() is None for p, _, _ in procs.values()):
    failed = next((name for name, (p, _, _) in procs.items() if p.poll() not in (None, 0)), None)
    if time.monotonic() > deadline:
      failed = next(name for name, (p, _, _) in procs.items() if p.poll() is None)
    time.sleep(0.2)
  failed = failed or next((name for name, (p, _, _) in procs.items() if p.returncode != 0), None)
  for p, log, _ in procs.values():
    if p.poll() is None:
      p.kill()
    p.wait()
    log.close()
  if failed is not None:
    p, _, argv = procs[failed]
    output = (tmp_path / f"{failed}.log").read_text()
    status = "timed out" if p.returncode == -9 and time.monotonic() > deadline else f"exit status {p.returncode}"
    pytest.fail(f"child {failed!r} failed ({status}): {' '.join(argv)}\n--- its output (last 4000 characters) ---\n"
                f"{output[-4000:]}", pytrace=False)


def worker(out, devices, process_id=None, num_processes=1, port=0):
  argv = [sys.executable, "-m", "tests.parallel_worker", str(out), "--steps", "12", "--batch", "32"]
  return argv, child_env(devices, process_id, num_processes, port)


def assert_same_training(a, b, tolerances, what):
  for prefix in ("first_", ""):
    tol = tolerances[0] if prefix else tolerances[1]
    for kind in ("param", "metric"):
      for key in (k for k in a.files if k.startswith(f"{prefix}{kind}:")):
        np.testing.assert_allclose(b[key], a[key], **tol[f"{kind}s"], err_msg=f"{what}: {key}")


def test_the_sharded_step_trains_like_the_unsharded_one_on_2_and_4_devices(tmp_path):
  """One process with 4 fake CPU devices, the step on meshes of 1, 2 and 4 of them."""
  argv = [sys.executable, "-m", "tests.parallel_worker", str(tmp_path / "run"), "--steps", "6", "--batch", "32",
          "--mesh_sizes", "1,2,4"]
  run_children(tmp_path, {"meshes": (argv, child_env(4))})
  runs = {n: np.load(tmp_path / f"run.mesh{n}.npz") for n in (1, 2, 4)}
  for n, run in runs.items():
    assert int(run["step"]) == 6 and int(run["device_count"]) == n
    np.testing.assert_array_equal(run["batches"], runs[1]["batches"], err_msg=f"{n} devices: other batches")
  for n in (2, 4):
    assert_same_training(runs[1], runs[n], (FIRST_STEP, LAST_STEP), f"{n} devices vs one")


@pytest.mark.slow  # five training processes at once: about 2 minutes of both CPU cores
def test_every_split_of_the_batch_trains_like_one_device(tmp_path):
  """1, 2 and 4 devices in one process, and 2 processes of 2 devices over loopback."""
  port = free_port()
  run_children(tmp_path, {
      "1dev": worker(tmp_path / "1dev", 1),
      "2dev": worker(tmp_path / "2dev", 2),
      "4dev": worker(tmp_path / "4dev", 4),
      **{f"2proc.{i}": worker(tmp_path / "2proc", 2, process_id=i, num_processes=2, port=port) for i in (0, 1)},
  })
  runs = {name: np.load(tmp_path / f"{name}.npz") for name in ("1dev.0", "2dev.0", "4dev.0", "2proc.0", "2proc.1")}
  one = runs["1dev.0"]
  for name, run in runs.items():
    assert run["step"] == 12
    np.testing.assert_array_equal(run["batches"], one["batches"],
                                  err_msg=f"{name}: the global batches differ from one device's")
  assert [int(runs[n]["device_count"]) for n in ("1dev.0", "2dev.0", "4dev.0")] == [1, 2, 4]
  assert (int(runs["2proc.0"]["process_count"]), int(runs["2proc.0"]["device_count"]),
          int(runs["2proc.0"]["local_device_count"])) == (2, 4, 2)
  for name in ("2dev.0", "4dev.0", "2proc.0"):
    assert_same_training(one, runs[name], (FIRST_STEP, LAST_STEP), f"{name} vs one device")
  # The same devices, one process or two: only the order of the 4-term gradient sums may differ.
  assert_same_training(runs["4dev.0"], runs["2proc.0"], (FIRST_STEP, SAME_DEVICES), "2 processes vs 4 devices")
  for key in runs["2proc.0"].files:  # the state is replicated: every process holds the same one
    np.testing.assert_array_equal(runs["2proc.0"][key], runs["2proc.1"][key], err_msg=key)


@pytest.mark.slow
def test_the_trainer_on_two_processes_matches_one_process_exactly(tmp_path):
  """`launch/local_processes.sh 2` (one device each) against one process with two devices."""
  args = ["--config=configs/toy.py:smoke"]
  multi = tmp_path / "two_processes"
  env = child_env(1)
  env.update(LOG_DIR=str(tmp_path / "logs"), PYTHON=sys.executable)
  run_children(tmp_path, {
      "two_processes": (["bash", "launch/local_processes.sh", "2", *args, f"--workdir={multi}"], env),
      "one_process": ([sys.executable, "-m", "bdbounds.main", *args, f"--workdir={tmp_path / 'one_process'}"],
                      child_env(2)),
  })
  single = tmp_path / "one_process"
  for name in ("eval/10.json", "eval/20.json", "plots/20.png", "checkpoints/20"):
    assert (multi / name).exists(), name
  for name in ("eval/10.json", "eval/20.json"):
    assert json.loads((multi / name).read_text()) == json.loads((single / name).read_text()), name

  def metrics(workdir):  # wall times aside
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in lines]
  assert metrics(multi) == metrics(single)  # also: written once, by process 0
  for key, value in saved_state(multi).items():
    np.testing.assert_array_equal(value, saved_state(single)[key], err_msg=key)


def saved_state(workdir) -> dict:
  """The latest checkpoint of `workdir`, restored onto this process's devices (as the loaders
  do, whatever layout saved it), by leaf path."""
  _, state = experiment.restore(str(workdir))
  assert int(state.step) == 20
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]}
