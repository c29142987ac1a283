"""What a run prints: our own progress lines, and dependencies' chatter only when asked for.

absl puts its handler on the root logger and sets the root's level from `--verbosity` (-1 is
WARNING, 0 INFO, 1 DEBUG, higher values absl's vlog levels). Orbax, etils, TFDS and JAX log
through the root, so its level is theirs: at INFO, Orbax alone prints about 40 lines per
checkpoint. Loggers under `bdbounds` (`logging.getLogger(__name__)` in our modules) get INFO on
top of that, so a default run still says what it did: checkpoints saved, skipped, resumed.
"""

import contextlib
import logging
from collections.abc import Mapping

from absl import flags
from absl.logging import converter

PACKAGE = "bdbounds"


def configure(verbosity: int = converter.ABSL_WARNING,
              logger_levels: Mapping[str, str | int] | None = None) -> None:
  """Sets logging levels from absl-style `verbosity` and `logger_levels` values.

  Dependencies log at `verbosity`'s level (WARNING by default; 0 adds their INFO lines); our
  loggers at INFO, or lower if `verbosity` asks for more. Entries of `logger_levels` (e.g.
  `{"bdbounds": "WARNING"}`) are applied last, so they win.
  """
  level = converter.absl_to_standard(verbosity)
  logging.getLogger().setLevel(level)
  # absl's own logger follows the root once absl's handler is installed (absl.app.run does);
  # make it so for callers without absl.app too.
  logging.getLogger("absl").setLevel(logging.NOTSET)
  logging.getLogger(PACKAGE).setLevel(min(level, logging.INFO))
  for name, value in (logger_levels or {}).items():
    logging.getLogger(name).setLevel(value)


def configure_from_flags() -> None:
  """`configure` from absl's parsed `--verbosity` and `--logger_levels` flags.

  absl.app.run sets `--verbosity` to 0 (INFO) when the command line does not give it, so a
  value counts only if given: `--verbosity=0` shows everyone's INFO lines, `--verbosity=1`
  (or `-v 1`) their DEBUG lines too.
  """
  verbosity = flags.FLAGS["verbosity"]
  configure(verbosity.value if verbosity.present else converter.ABSL_WARNING,
            flags.FLAGS.logger_levels)


@contextlib.contextmanager
def beside_progress_bars():
  """Inside the block, a log line first clears tqdm's bars from the terminal and redraws them
  after (`tqdm.external_write_mode`), so that lines and bar do not run into each other."""
  from tqdm import tqdm
  handlers = list(logging.getLogger().handlers)
  for handler in handlers:
    handle = handler.handle  # absl's handler overrides `handle`, not `emit`

    def beside_bars(record, handle=handle):
      with tqdm.external_write_mode():
        return handle(record)
    handler.handle = beside_bars
  try:
    yield
  finally:
    for handler in handlers:
      del handler.handle  # the class's own again
