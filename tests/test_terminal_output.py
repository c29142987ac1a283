"""What the README's command prints: our own lines and the report, not Orbax's chatter."""

import functools
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from bdbounds import logs

REPO = pathlib.Path(__file__).resolve().parents[1]
# absl's prefix: level letter (DEBUG shows as I too), date, time, thread id, file:line.
ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ ([^:\s]+):(\d+)\] ")
LOGGING_CALL = re.compile(r"\blog(?:ger|ging)?\.(?:debug|info|warning|error|exception|critical|log)\(|getLogger\(")


def run_main(*args: str) -> str:
  """`python -m bdbounds.main --config=configs/toy.py:smoke ARGS`; its stdout and stderr, interleaved."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-m", "bdbounds.main", "--config=configs/toy.py:smoke", *args],
                        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-3000:]
  return done.stdout


@functools.cache
def our_sources() -> dict[str, list[list[str]]]:
  """The lines of each file of the package, by base name (absl's prefix names only that)."""
  sources = {}
  for path in (REPO / "bdbounds").rglob("*.py"):
    sources.setdefault(path.name, []).append(path.read_text().splitlines())
  return sources


def is_ours(file: str, lineno: int) -> bool:
  """Whether `file:lineno` is a logging call of ours (a call over several lines reports one of them)."""
  for lines in our_sources().get(file, []):
    statement = lines[max(lineno - 4, 0):lineno]
    if any(LOGGING_CALL.search(line) for line in statement):
      return True
  return False


def info_lines(output: str) -> list[tuple[str, int, str]]:
  return [(m[2], int(m[3]), line) for line in output.splitlines() if (m := ABSL_LINE.match(line)) and m[1] == "I"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke") / "run"
  return workdir, run_main(f"--workdir={workdir}")


def test_default_run_prints_our_lines_and_the_report_only(smoke_run):
  workdir, output = smoke_run
  lines = info_lines(output)
  theirs = [line for file, lineno, line in lines if not is_ours(file, lineno)]
  assert not theirs, "\n".join(theirs[:20])
  messages = [line.split("] ", 1)[1] for _, _, line in lines]
  assert "checkpoint saved at step 10" in messages and "checkpoint saved at step 20" in messages
  assert f"step 20: evaluation of {workdir}" in output.splitlines()
  assert "Traceback" not in output
  assert len(output.splitlines()) < 30, output


def test_verbosity_0_shows_dependencies_info_lines(smoke_run):
  workdir, _ = smoke_run
  output = run_main(f"--workdir={workdir}", "--mode=eval", "--verbosity=0")  # restores a checkpoint
  theirs = [line for file, lineno, line in info_lines(output) if not is_ours(file, lineno)]
  assert any("checkpoint_manager.py" in line for line in theirs), output[-3000:]
  assert f"step 20: evaluation of {workdir}" in output.splitlines()


@pytest.fixture
def restore_levels():
  names = ("", "absl", "bdbounds", "orbax")
  levels = {name: logging.getLogger(name).level for name in names}
  yield
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("verbosity, theirs, ours", [
    (-1, logging.WARNING, logging.INFO),  # the default
    (-2, logging.ERROR, logging.INFO),
    (0, logging.INFO, logging.INFO),
    (1, logging.DEBUG, logging.DEBUG),
])
def test_configure_levels(restore_levels, verbosity, theirs, ours):
  logs.configure(verbosity)
  assert logging.getLogger("orbax.checkpoint").getEffectiveLevel() == theirs
  assert logging.getLogger("absl").getEffectiveLevel() == theirs
  assert logging.getLogger("bdbounds.checkpointing").getEffectiveLevel() == ours


def test_configure_logger_levels_win(restore_levels):
  logs.configure(-1, {"bdbounds": "WARNING", "orbax": "INFO"})
  assert logging.getLogger("bdbounds.train").getEffectiveLevel() == logging.WARNING
  assert logging.getLogger("orbax.checkpoint").getEffectiveLevel() == logging.INFO
