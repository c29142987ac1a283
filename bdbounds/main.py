"""Command line: `python -m bdbounds.main --config=configs/toy.py --workdir=runs/toy`.

Overrides: `--config.bounds.upper=score_matching`; presets: `--config=configs/toy.py:rings,smoke`.
Several processes or hosts: the same command on each (see launch/ and docs/multihost.md).
"""

import logging
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from bdbounds import checkpointing, evaluate, experiment, logs, parallel, train
from bdbounds.data import DatasetNotPreparedError
from bdbounds.evaluators.inception_weights import InceptionWeightsError

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Configuration file[:presets].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/toy", "Run directory: checkpoints, metrics, plots.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate a saved step.")
_STEP = flags.DEFINE_integer("step", None, "With --mode=eval: the checkpoint step (default: latest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.configure_from_flags()  # our INFO lines; dependencies' only with --verbosity=0
  parallel.initialize_distributed()  # before anything touches JAX; a no-op for a single process
  try:
    if _MODE.value == "train":
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      evaluate.evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
  except train.Preempted as e:
    logging.warning("%s", e)
    sys.exit(128 + signal.SIGTERM)  # the conventional status of a process ended by SIGTERM
  # Expected failures whose message says what to do: that message alone, not a traceback.
  except (experiment.ConfigError, DatasetNotPreparedError, checkpointing.CheckpointNotFoundError,
          InceptionWeightsError) as e:
    logging.error("%s", e)
    sys.exit(2)
  except train.NonFiniteError as e:
    logging.error("%s", e)
    sys.exit(1)


def _parse_flags(argv):
  """absl's flag parsing, with a mistake in --config reported in one line instead of a traceback."""
  try:
    args = flags.FLAGS(argv)
    _CONFIG.value.keys()  # a config file that failed to load raises on first use; make that now
    return args
  except OSError as e:  # no such config file
    message = f"--config: {str(e).strip().splitlines()[-1].strip()}"
  except flags.Error as e:  # a value of the wrong type, or an error raised by the config file
    lines = str(e).strip().splitlines()
    # ml_collections passes a config file's error on with its traceback as text; the last line says it.
    message = lines[0] if len(lines) == 1 else f"{lines[0].split(' Error whilst')[0]} {lines[-1].strip()}"
  except (AttributeError, KeyError) as e:  # --config.<key>=... where the config has no such key
    message = _unknown_key(argv, e)
    if message is None:  # not an override's key after all: a bug, whose traceback is wanted
      raise
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _unknown_key(argv, error):
  """Names the override of a missing key; ml_collections names only the field ('foo'), with a
  suggestion for a near miss."""
  detail = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  if isinstance(error, AttributeError) and isinstance(error.args[0], KeyError):
    detail = str(error.args[0].args[0])
  field, _, suggestion = detail.partition("\n")
  field = field.strip("'")
  names = [a.split("=")[0] for a in argv if a.startswith("--config.") and field in a.split("=")[0].split(".")]
  if not names:
    return None
  hint = f"{suggestion} " if suggestion else ""
  return f"{', '.join(names)}: the config has no key {field!r}. {hint}Every key, with its meaning, is in configs/base.py."


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
