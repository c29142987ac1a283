"""Command line: `python -m bdbounds.main --config=configs/toy.py --workdir=runs/toy`.

Overrides: `--config.bounds.upper=score_matching`; presets: `--config=configs/toy.py:rings,smoke`.
Several processes or hosts: the same command on each (see launch/ and docs/multihost.md).
"""

import logging
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from bdbounds import evaluate, parallel, train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy.py", "Configuration file[:presets].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/toy", "Run directory: checkpoints, metrics, plots.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate a saved step.")
_STEP = flags.DEFINE_integer("step", None, "With --mode=eval: the checkpoint step (default: latest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.getLogger().setLevel(logging.INFO)
  parallel.initialize_distributed()  # before anything touches JAX; a no-op for a single process
  if _MODE.value == "train":
    try:
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.Preempted as e:
      logging.warning("%s", e)
      sys.exit(128 + signal.SIGTERM)  # the conventional status of a process ended by SIGTERM
  else:
    evaluate.evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value)


if __name__ == "__main__":
  app.run(main)
