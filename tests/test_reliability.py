"""Faults and mistakes, end to end through the real trainer and command line.

A run killed outright (at a random step, or while a checkpoint is being written) and started again
with the same command ends with the same bits as a run that was never interrupted; the same seed
repeats a run exactly; a mistake on the command line stops with one line that says what is wrong and
leaves the workdir as it was; a long run stays finite and its disk use stays bounded.
"""

import collections
import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from bdbounds import experiment, train, writers
from bdbounds.data import DatasetNotPreparedError
from configs import mnist, toy

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TIMEOUT = 900  # seconds for one command-line run: generous, for a loaded CI machine
COMMIT_MARKER = "commit_success.txt"  # the last file Orbax writes into a finished checkpoint
PARTIAL = ".orbax-checkpoint-tmp"     # Orbax writes `<step>.orbax-checkpoint-tmp`, then renames it


def command(workdir, *args):
  return [sys.executable, "-m", "bdbounds.main", f"--workdir={workdir}", *args]


def run_command(workdir, *args):
  """Runs the command line to its end: (exit status, stdout and stderr together)."""
  done = subprocess.run(command(workdir, *args), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
  return done.returncode, done.stdout


@pytest.fixture
def start_command():
  """Starts the command line with its output in a file (a pipe nobody reads would block it); whatever
  is still running when the test ends is killed."""
  started = []

  def start(workdir, log, *args):
    with open(log, "w") as f:
      started.append(subprocess.Popen(command(workdir, *args), cwd=REPO, env=ENV, stdout=f,
                                      stderr=subprocess.STDOUT))
    return started[-1]

  yield start
  for process in started:
    if process.poll() is None:
      process.kill()
      process.wait()


def wait_for(process, log):
  process.wait(timeout=TIMEOUT)
  return process.returncode, Path(log).read_text()


def smoke_config(*overrides):
  config = toy.get_config("smoke")
  with config.unlocked():
    config.update_from_flattened_dict(dict(overrides))
  return config


def snapshot(root):
  """Every entry under `root`: relative path -> sha256 of a file's bytes, or None for a directory."""
  root = Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
          for p in sorted(root.rglob("*"))}


def tree_size(root):
  root = Path(root)
  return root.stat().st_size if root.is_file() else sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def committed_steps(workdir):
  directory = Path(workdir) / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / COMMIT_MARKER).exists())


def partial_checkpoints(workdir):
  directory = Path(workdir) / "checkpoints"
  return sorted(name for name in os.listdir(directory) if PARTIAL in name) if directory.exists() else []


def last_logged_step(workdir):
  """The step of the last complete line of metrics.jsonl (0 before there is one); reads only the tail."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return 0
  with open(path, "rb") as f:
    f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))  # several lines (each well under 4 KiB)
    lines = f.read().split(b"\n")[:-1]  # the part after the last newline may be half written
  return json.loads(lines[-1])["step"] if lines else 0


def metric_lines(workdir):
  """metrics.jsonl as [((step, "train" | "eval"), record)], without the wall-clock timing."""
  lines = []
  for record in writers.read_jsonl(Path(workdir) / "metrics.jsonl"):
    record.pop("train/seconds_per_step", None)
    kind = "eval" if any(name.startswith("eval/") for name in record) else "train"
    lines.append(((record["step"], kind), record))
  return lines


def saved_state(workdir):
  """The newest checkpoint of a run, restored with the run's own config.json."""
  _, state = experiment.restore(str(workdir))
  return jax.device_get(state)


def assert_same_bits(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert (x.dtype, x.shape) == (y.dtype, y.shape), jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), f"{jax.tree_util.keystr(path)} differs"


def read_json(path):
  return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------------------
# SIGKILL: no handler runs, nothing is flushed; the same command must still end where it would have.

KILL_STEPS, KILL_EVERY = 600, 50
KILL_ARGS = ("--config=configs/toy.py:smoke", f"--config.training.num_steps={KILL_STEPS}",
             f"--config.checkpoint.every_steps={KILL_EVERY}", "--config.eval.every_steps=1000000",
             "--config.log.every_steps=1")


@pytest.mark.slow  # five command-line runs, three at a time: 2 to 3 minutes on 2 busy CPU cores
def test_sigkill_then_the_same_command_ends_with_the_bits_of_an_uninterrupted_run(tmp_path, start_command):
  rng = random.Random(1729)
  kill_step = rng.randrange(2 * KILL_EVERY, KILL_STEPS - KILL_EVERY)  # a checkpoint before it, not the last
  write_step = KILL_EVERY * rng.randrange(2, KILL_STEPS // KILL_EVERY)  # a write with a checkpoint before it
  reference, at_step, in_write = tmp_path / "reference", tmp_path / "killed_at_a_step", tmp_path / "killed_in_a_write"
  logs = {w: tmp_path / f"{w.name}.log" for w in (reference, at_step, in_write)}
  runs = {w: start_command(w, logs[w], *KILL_ARGS) for w in (reference, at_step, in_write)}
  kill_when = {
      at_step: lambda: last_logged_step(at_step) >= kill_step,
      in_write: lambda: any(name.startswith(f"{write_step}{PARTIAL}") for name in partial_checkpoints(in_write)),
  }
  deadline = time.monotonic() + TIMEOUT
  while kill_when:
    for workdir, ready in list(kill_when.items()):
      if ready():
        os.kill(runs[workdir].pid, signal.SIGKILL)
        runs[workdir].wait()
        del kill_when[workdir]
      else:
        assert runs[workdir].poll() is None, f"{workdir.name} ended early:\n{logs[workdir].read_text()[-3000:]}"
    assert time.monotonic() < deadline
    time.sleep(0.005)

  killed_at, resume_from = {}, {}
  for workdir in (at_step, in_write):
    assert runs[workdir].returncode == -signal.SIGKILL
    killed_at[workdir] = last_logged_step(workdir)
    resume_from[workdir] = committed_steps(workdir)[-1]
    assert KILL_EVERY <= resume_from[workdir] <= killed_at[workdir] < KILL_STEPS, (workdir.name, killed_at)
  print(f"killed at steps {killed_at[at_step]} (aimed at {kill_step}) and {killed_at[in_write]} (in the write of "
        f"step {write_step}); resuming from steps {resume_from[at_step]} and {resume_from[in_write]}")
  assert killed_at[at_step] >= kill_step
  # The kill landed inside the write: the half-written step is on disk, the step before it is the last
  # complete one.
  assert partial_checkpoints(in_write) == [f"{write_step}{PARTIAL}"]
  assert resume_from[in_write] == write_step - KILL_EVERY

  # The same command again, in the killed workdirs.
  resumed = {w: start_command(w, tmp_path / f"{w.name}.resumed.log", *KILL_ARGS) for w in (at_step, in_write)}
  status, output = wait_for(runs[reference], logs[reference])
  assert status == 0, output[-3000:]
  expected = dict(metric_lines(reference))
  assert len(expected) == len(metric_lines(reference)) == KILL_STEPS + 1  # every step once, and one eval
  final_state = saved_state(reference)
  for workdir, run in resumed.items():
    status, output = wait_for(run, tmp_path / f"{workdir.name}.resumed.log")
    assert status == 0, output[-3000:]
    assert f"resumed from step {resume_from[workdir]}" in output
    assert_same_bits(saved_state(workdir), final_state)
    assert read_json(workdir / "eval" / f"{KILL_STEPS}.json") == read_json(reference / "eval" / f"{KILL_STEPS}.json")
    # Each line ever logged (before the kill and after the resume) is the uninterrupted run's line for
    # that step; the steps between the checkpoint and the kill were logged twice, identically.
    lines = metric_lines(workdir)
    for key, record in lines:
      assert record == expected[key], key
    assert {key for key, _ in lines} == set(expected)
    logged = collections.Counter(step for (step, kind), _ in lines if kind == "train")
    assert max(logged.values()) <= 2
    assert sorted(s for s, n in logged.items() if n == 2) == list(range(resume_from[workdir] + 1,
                                                                        killed_at[workdir] + 1))
    assert partial_checkpoints(workdir) == []  # the half-written step was written again, in full
    assert committed_steps(workdir) == committed_steps(reference)


# ---------------------------------------------------------------------------------------------------
# Determinism on CPU.

SHORT = (("eval.every_steps", 1000),)  # one evaluation, at the last step


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """A finished smoke run (seed 0); the tests using it only read it."""
  workdir = tmp_path_factory.mktemp("smoke") / "run"
  train.train_and_evaluate(smoke_config(*SHORT), str(workdir))
  return workdir


@pytest.mark.slow  # three toy runs: about a minute on 2 CPU cores
def test_the_same_seed_repeats_a_run_and_another_seed_does_not(tmp_path, smoke_run):
  again, other = tmp_path / "again", tmp_path / "other_seed"
  train.train_and_evaluate(smoke_config(*SHORT), str(again))
  train.train_and_evaluate(smoke_config(*SHORT, ("seed", 1)), str(other))
  num_steps = smoke_config().training.num_steps
  first = metric_lines(smoke_run)
  assert len(first) == num_steps // smoke_config().log.every_steps + 1
  assert metric_lines(again) == first
  assert read_json(again / "eval" / f"{num_steps}.json") == read_json(smoke_run / "eval" / f"{num_steps}.json")
  assert_same_bits(saved_state(again), saved_state(smoke_run))
  # Another seed: other parameters, data and noise, so every logged line differs.
  different = metric_lines(other)
  assert [key for key, _ in different] == [key for key, _ in first]
  assert all(a != b for (_, a), (_, b) in zip(first, different))
  assert read_json(other / "eval" / f"{num_steps}.json")["nll"] != read_json(
      smoke_run / "eval" / f"{num_steps}.json")["nll"]


# ---------------------------------------------------------------------------------------------------
# Mistakes on the command line: a non-zero status, one line naming the problem and what to do, and the
# workdir untouched. Every case is run against a finished run's workdir.

BAD_INPUT = [
    pytest.param(["--config=configs/toy.py:smoke", "--config.training.foo=1"],
                 "--config.training.foo: the config has no key 'foo'. Every key, with its meaning, is in "
                 "configs/base.py", id="unknown_key"),
    pytest.param(["--config=configs/toy.py:nonsense"],
                 "unknown preset 'nonsense' in configs/toy.py; use a data set (8gaussians", id="unknown_preset"),
    pytest.param(["--config=configs/toy.py:smoke", "--config.training.num_steps=abc"],
                 "--config.training.num_steps=abc: invalid literal for int()", id="wrong_type"),
    pytest.param(["--config=configs/nosuch.py"],
                 "--config: [Errno 2] No such file or directory: 'configs/nosuch.py'", id="missing_config_file"),
    pytest.param(["--config=configs/toy.py:smoke", "--config.data.name=nosuch"],
                 "unknown data set data.name='nosuch'; choose one of ('8gaussians'", id="unknown_data_set"),
    pytest.param(["--config=configs/mnist.py:smoke", "--config.data.data_dir={empty}"],
                 "TFDS data set 'mnist' version", id="image_data_not_prepared"),
    pytest.param(["--config=configs/toy.py:smoke", "--config.bounds.upper=nosuch"],
                 "bounds.upper='nosuch' is not one of ('none', 'latent_fisher'", id="unknown_bound"),
    pytest.param(["--config=configs/toy.py:smoke", "--config.bounds.upper=r1"],
                 "holds a run with a different config (bounds.upper: 'latent_fisher' -> 'r1'). Use a new "
                 "--workdir", id="workdir_of_another_config"),
]
# How the command line reports an error: `error: ...` before the flags are parsed, absl's `E<date>`
# log line after.
ERROR_LINE = re.compile(r"^(error: |E\d{4} )")


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_a_mistake_stops_with_one_line_and_leaves_the_workdir_as_it_was(tmp_path, smoke_run, args, message):
  empty = tmp_path / "tensorflow_datasets"
  empty.mkdir()
  args = [a.format(empty=empty) for a in args]
  before = snapshot(smoke_run)
  status, output = run_command(smoke_run, *args)
  assert status == 2, output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  errors = [line for line in output.splitlines() if ERROR_LINE.match(line)]
  assert len(errors) == 1 and message in errors[0], output[-3000:]
  assert output.count(message) == 1
  if "data_dir" in " ".join(args):  # the message carries the command that prepares the data
    assert f"tfds build mnist --data_dir={empty} --file_format=array_record" in output
  assert snapshot(smoke_run) == before
  assert not any(empty.iterdir())


def _mnist_without_data(tmp_path):
  config = mnist.get_config("smoke")
  with config.unlocked():
    config.data.data_dir = str(tmp_path / "tensorflow_datasets")
  return config


@pytest.mark.parametrize("make_config, error, match", [
    (lambda _: smoke_config(("data.name", "nosuch")), experiment.ConfigError, "unknown data set"),
    (lambda _: smoke_config(("bounds.lower", "nosuch")), experiment.ConfigError, "bounds.lower='nosuch'"),
    (lambda _: smoke_config(("model.arch", "dcgan")), experiment.ConfigError, "is 2-D: use model.arch='mlp'"),
    (lambda _: smoke_config(("training.batch_size", 0)), experiment.ConfigError, "training.batch_size=0"),
    (lambda _: smoke_config(("model.energy_hidden", ("abc",))), experiment.ConfigError, "model.energy_hidden=('abc',)"),
    (_mnist_without_data, DatasetNotPreparedError, "tfds build mnist"),
], ids=["unknown_data_set", "unknown_bound", "wrong_architecture", "batch_size", "hidden_widths",
        "image_data_not_prepared"])
def test_a_config_that_cannot_run_creates_no_workdir(tmp_path, make_config, error, match):
  # A config.json left behind would make the corrected command refuse the workdir as another run's.
  workdir = tmp_path / "run"
  with pytest.raises(error, match=re.escape(match)):
    train.train_and_evaluate(make_config(tmp_path), str(workdir))
  assert not workdir.exists()


# ---------------------------------------------------------------------------------------------------
# A long run.

class _CheckpointWatch(threading.Thread):
  """Samples `<workdir>/checkpoints` during a run: most step directories (complete or being written)
  and most bytes seen at once, and the size of every complete checkpoint seen."""

  def __init__(self, workdir, interval=0.02):
    super().__init__(daemon=True)
    self.directory, self.interval = Path(workdir) / "checkpoints", interval
    self.most_dirs, self.most_bytes, self.checkpoint_bytes = 0, 0, {}
    self._stop_event = threading.Event()

  def run(self):
    while not self._stop_event.wait(self.interval):
      try:  # Orbax writes, renames and deletes while we look
        names = os.listdir(self.directory)
        steps = [n for n in names if n.split(".")[0].isdigit()]
        self.most_dirs = max(self.most_dirs, len(steps))
        self.most_bytes = max(self.most_bytes, tree_size(self.directory))
        for name in steps:
          if name.isdigit() and (self.directory / name / COMMIT_MARKER).exists():
            self.checkpoint_bytes[int(name)] = tree_size(self.directory / name)
      except FileNotFoundError:
        pass

  def stop(self):
    self._stop_event.set()
    self.join()


@pytest.mark.slow  # 50k steps of a small toy model: about 2 minutes on 2 CPU cores
def test_a_long_run_stays_finite_and_its_disk_use_stays_bounded(tmp_path):
  num_steps, every, keep, log_every = 50_000, 400, 2, 500
  config = toy.get_config()
  with config.unlocked():
    config.update_from_flattened_dict({
        "training.num_steps": num_steps, "training.batch_size": 32,
        "model.energy_hidden": (32, 32), "model.generator_hidden": (32, 32),
        "checkpoint.every_steps": every, "checkpoint.max_to_keep": keep,
        "log.every_steps": log_every, "log.progress_bar": False,
        "eval.every_steps": num_steps, "eval.quadrature_tol": 1e-2})
  workdir = tmp_path / "run"
  watch = _CheckpointWatch(workdir)
  watch.start()
  try:
    _, report = train.train_and_evaluate(config, str(workdir))
  finally:
    watch.stop()

  # Finite throughout: every logged value, the evaluation, and no update was ever dropped.
  lines = writers.read_jsonl(workdir / "metrics.jsonl")
  assert len(lines) == num_steps // log_every + 1
  assert all(math.isfinite(v) for line in lines for v in line.values())
  assert all(line["train/skipped_updates"] == 0 for line in lines if "train/skipped_updates" in line)
  assert report["step"] == num_steps
  assert all(math.isfinite(v) for v in report.values() if isinstance(v, (int, float)))

  # Only what a run writes, and of the checkpoints only the newest `keep`.
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "eval", "metrics.jsonl", "plots",
                                         "tensorboard"]
  assert os.listdir(workdir / "eval") == [f"{num_steps}.json"]
  assert os.listdir(workdir / "plots") == [f"{num_steps}.png"]
  assert len(os.listdir(workdir / "tensorboard")) == 1
  assert committed_steps(workdir) == [num_steps - every, num_steps]
  assert partial_checkpoints(workdir) == []
  assert len(watch.checkpoint_bytes) >= num_steps // every // 2, "the watch saw too few checkpoints"
  assert watch.most_dirs <= keep + 1  # the kept ones, and one being written

  # Disk use: at most keep + 1 checkpoints at any moment (one more while it is written), plus Orbax's
  # files beside the step directories, plus the logs and the one evaluation.
  checkpoints = workdir / "checkpoints"
  one_checkpoint = max(watch.checkpoint_bytes.values())
  beside = sum(p.stat().st_size for p in checkpoints.iterdir() if p.is_file())
  checkpoint_limit = (keep + 1) * one_checkpoint + beside
  print(f"checkpoints of {min(watch.checkpoint_bytes.values())}-{one_checkpoint} bytes ({len(watch.checkpoint_bytes)} "
        f"seen); at most {watch.most_dirs} step directories and {watch.most_bytes} bytes at once (limit "
        f"{checkpoint_limit}); workdir {tree_size(workdir)} bytes")
  assert watch.most_bytes <= checkpoint_limit
  logs_and_plots = sum(tree_size(workdir / name) for name in
                       ("config.json", "metrics.jsonl", "tensorboard", "eval", "plots"))
  assert tree_size(workdir) <= checkpoint_limit + logs_and_plots
  assert tree_size(checkpoints) <= keep * one_checkpoint + beside
