"""Saving and resuming training state with Orbax.

:class:`Checkpointer` is a thin wrapper over ``orbax.checkpoint.CheckpointManager``
that fixes the choices every training script would otherwise repeat:

* One checkpoint holds two items, committed together: ``state`` (any pytree of
  arrays and Python scalars, written with ``StandardSave``) and ``extra`` (a
  small JSON dict such as the data-pipeline position or a config hash, written
  with ``JsonSave``).
* Saving is asynchronous: :meth:`Checkpointer.save` returns once the arrays
  have been copied to host memory and the files are written in the background.
  :meth:`Checkpointer.wait` (or :meth:`Checkpointer.close`) blocks until the
  checkpoint is committed and durable.
* :meth:`Checkpointer.restore` with no step resumes from the newest checkpoint
  that is *complete and readable*, falling back to older ones with a logged
  warning. A job killed while copying or writing checkpoints should lose at
  most one checkpoint interval, not the run.

What it logs (logger ``bdbounds.checkpointing``), one line per event: INFO
``checkpoint saved at step N`` once a save is known to be committed (at the
next :meth:`~Checkpointer.save`, :meth:`~Checkpointer.wait`,
:meth:`~Checkpointer.close` or :meth:`~Checkpointer.restore`, which wait for
it), and a WARNING for each checkpoint that restore skips for an older one
(when none is left, the error says why). Orbax's own lines go through absl's
logger; see :mod:`bdbounds.logs` for what the terminal shows.

How Orbax marks a checkpoint complete: every finished step directory
contains a ``commit_success.txt`` file, the last file a save writes.
On local disks Orbax writes into ``<step>.orbax-checkpoint-tmp`` and renames
the directory after writing that file; on object stores such as GCS,
where renames are not atomic, the file alone marks the commit. Orbax hides
temporary directories from ``all_steps()`` (and removes a stale one, with a
warning, when the same step is saved again). On a local disk it does not check
the marker on directories that look final, though, so a step directory
without it (for example from a copy that was cut short) is listed as a step
anyway. :meth:`Checkpointer.restore` therefore checks the marker itself
before reading.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["Checkpointer", "CheckpointNotFoundError"]

logger = logging.getLogger(__name__)

# Written by Orbax as the last file of every committed step directory (name
# taken from ``orbax.checkpoint.path.atomicity_types.COMMIT_SUCCESS_FILE``).
_COMMIT_MARKER = "commit_success.txt"
_STATE = "state"
_EXTRA = "extra"


class CheckpointNotFoundError(FileNotFoundError):
  """There is no checkpoint, or none that can be read, to restore from."""


class Checkpointer:
  """Saves and restores ``(state, extra)`` checkpoints under one directory.

  Steps are integers; step ``s`` lives in ``<directory>/<s>/``, with one
  subdirectory per item (``state/`` and ``extra/``). In multi-process jobs every
  process must call :meth:`save` and :meth:`restore`; Orbax coordinates the
  writes among them.

  Args:
    directory: A local path or any path Orbax accepts (e.g. ``gs://bucket/run``).
      It is created if missing.
    max_to_keep: How many of the newest checkpoints to keep; older ones are
      deleted after each save.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    directory = os.fspath(directory)
    if "://" not in directory:
      # Orbax needs an absolute path; relative local ones get resolved here.
      directory = os.path.abspath(directory)
    self._directory = epath.Path(directory)
    self._manager = ocp.CheckpointManager(
        self._directory,
        item_names=(_STATE, _EXTRA),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )
    # Steps that restore() found unreadable and skipped. The run continues from
    # an older step, so these belong to an abandoned future; the next save()
    # deletes them (see `_drop_abandoned`).
    self._abandoned: set[int] = set()
    self._restored_step: int | None = None
    # The step of the save still in the background, logged once it is known to be committed.
    self._pending: int | None = None

  @property
  def directory(self) -> epath.Path:
    return self._directory

  @property
  def restored_step(self) -> int | None:
    """The step the last :meth:`restore` call read (``None`` before any).

    It can be older than :meth:`latest_step` if newer checkpoints were skipped
    as unreadable.
    """
    return self._restored_step

  def latest_step(self) -> int | None:
    """The newest step on disk, or ``None`` if there is none.

    This is what Orbax lists (temporary directories excluded), including a
    save still in progress; the checkpoint itself is not read. :meth:`restore`
    may fall back to an earlier step if this one turns out to be unreadable;
    :attr:`restored_step` tells which one it used.
    """
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All steps on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def save(
      self, step: int, state: Any, *, extra: dict | None = None, force: bool = False
  ) -> None:
    """Starts saving ``state`` and ``extra`` as the checkpoint for ``step``.

    Returns once the arrays have been copied off the device (so the caller may
    donate or overwrite them); the files are written in the background. Call
    :meth:`wait` to make the checkpoint durable. The previous save is waited for
    first (Orbax would wait for it anyway), and logged as saved.

    Like Orbax, this skips (with a warning) a step that is not newer than
    :meth:`latest_step` unless ``force=True``; with ``force``, a step that
    already exists raises ``StepAlreadyExistsError``.

    Args:
      step: Training step to label the checkpoint with.
      state: Pytree of ``jax.Array`` / ``np.ndarray`` / Python scalars.
      extra: Small JSON-serialisable dict saved in the same checkpoint.
      force: Save even if Orbax's save policy would skip this step.
    """
    extra = {} if extra is None else dict(extra)
    try:
      # JsonSave serialises in the background thread; fail here, in the
      # caller's frame, instead.
      json.dumps(extra)
    except (TypeError, ValueError) as e:
      raise TypeError(f"`extra` must be JSON-serialisable: {e}") from e
    self._finish_pending()
    self._drop_abandoned()
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _EXTRA: ocp.args.JsonSave(extra)}
        ),
        force=force,
    )
    if saved:
      self._pending = step
    else:
      logger.warning(
          "Checkpoint for step %d was not saved: the latest checkpoint in %s is"
          " step %s, and Orbax only saves newer steps unless force=True.",
          step, self._directory, self.latest_step(),
      )

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of ``template``.

    Args:
      template: Pytree with the structure of the saved state whose leaves are
        arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``), and
        may carry shardings. Leaves come back with the template's dtypes and
        shardings: ``ShapeDtypeStruct`` and ``jax.Array`` leaves as
        ``jax.Array``, NumPy leaves as NumPy, Python scalars as Python scalars.
      step: Step to read. ``None`` means the newest complete and readable
        checkpoint: unreadable newer ones are skipped with a logged warning
        that names the step and the reason.

    Returns:
      ``(state, extra)``.

    Raises:
      CheckpointNotFoundError: If there is no checkpoint, the requested step does
        not exist or is incomplete, or (with ``step=None``) no checkpoint can be
        read; the message lists each step's reason.
      Exception: Whatever Orbax raises when an explicitly requested step cannot
        be read.
    """
    # A save still in flight has no commit marker yet; let it finish rather
    # than skip it as incomplete.
    self._finish_pending()
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise CheckpointNotFoundError(
            f"No checkpoint for step {step} in {self._directory}; available"
            f" steps: {steps}."
        )
      reason = self._incomplete_reason(step)
      if reason is not None:
        raise CheckpointNotFoundError(
            f"Checkpoint for step {step} in {self._directory} is incomplete: {reason}."
        )
      return self._read(template, step)

    if not steps:
      raise CheckpointNotFoundError(f"No checkpoint found in {self._directory}.")
    failures = []
    for i in reversed(range(len(steps))):
      candidate = steps[i]
      reason = self._incomplete_reason(candidate)
      if reason is None:
        try:
          restored = self._read(template, candidate)
        except Exception as e:  # pylint: disable=broad-except
          # Orbax and TensorStore raise a variety of types for missing and
          # truncated files (ValueError, FileNotFoundError, OSError, ...), so
          # any failure of this step counts as "unreadable". The full error
          # goes to the debug log; the warning keeps its first line.
          logger.debug("Restoring step %d failed.", candidate, exc_info=True)
          reason = f"{type(e).__name__}: {_first_line(e)}"
        else:
          # Only a successful fallback marks the skipped steps for deletion:
          # if nothing is readable the cause may be the template (a changed
          # model) rather than the files, and nothing should be removed.
          self._abandoned.update(s for s, _ in failures)
          return restored
      failures.append((candidate, reason))
      if i > 0:  # the last one is named by the error below
        logger.warning(
            "checkpoint %d is not usable (%s); restoring step %d",
            candidate, reason, steps[i - 1],
        )
    details = "; ".join(f"step {s}: {r}" for s, r in failures)
    raise CheckpointNotFoundError(
        f"No readable checkpoint in {self._directory} ({details})."
    )

  def wait(self) -> None:
    """Blocks until pending saves are committed; re-raises their errors."""
    self._finish_pending()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's resources."""
    self._finish_pending()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _finish_pending(self) -> None:
    """Waits for the save in the background, and says it was saved once it is."""
    step, self._pending = self._pending, None
    self._manager.wait_until_finished()  # raises the save's error, if it failed
    if step is not None:
      logger.info("checkpoint saved at step %d", step)

  def _read(self, template: Any, step: int) -> tuple[Any, dict]:
    with _AbandonedReadErrors(step):
      return self._restore_step(template, step)

  def _restore_step(self, template: Any, step: int) -> tuple[Any, dict]:
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(jax.tree.map(_orbax_template, template)),
            _EXTRA: ocp.args.JsonRestore(),
        }),
    )
    state = jax.tree.map(_like_template, template, restored[_STATE])
    extra = restored[_EXTRA]
    self._restored_step = step
    return state, dict(extra) if extra is not None else {}

  def _incomplete_reason(self, step: int) -> str | None:
    """Why ``step`` is not a committed checkpoint, or ``None`` if it is."""
    if not (self._directory / str(step) / _COMMIT_MARKER).exists():
      return f"no Orbax commit marker '{_COMMIT_MARKER}': partially written or copied"
    return None

  def _drop_abandoned(self) -> None:
    """Deletes the unreadable checkpoints that restore() skipped.

    After a fallback the run continues from an older step. Leaving the skipped
    checkpoints in place would make Orbax refuse every save up to their step
    numbers (it only saves steps newer than the latest one) and collide with
    them later; they are also never going to be restored. Deleting happens at
    the first save, not in restore(), so merely inspecting a directory never
    removes anything, and only after a successful fallback.
    """
    existing = set(self._manager.all_steps())
    for step in sorted(self._abandoned & existing):
      logger.warning(
          "deleting unusable checkpoint %d: the run went on from step %s",
          step, self._restored_step,
      )
      self._manager.delete(step)
    self._abandoned.clear()


class _AbandonedReadErrors:
  """Keeps the reads a failed restore abandons from printing a traceback each.

  When one array of a checkpoint cannot be read, Orbax's restore raises and
  closes its asyncio loop while TensorStore is still reading the other arrays.
  As each of those reads ends, a TensorStore thread calls
  ``loop.call_soon_threadsafe`` on the closed loop, and the ``RuntimeError:
  Event loop is closed`` goes to ``sys.unraisablehook``, which prints it with
  its traceback: dozens of them for one unreadable checkpoint. Nobody waits for
  those results, so while this is entered exactly that error is sent to the
  debug log instead (the first with its traceback); every other one goes on to
  the previous hook. After a failed read it waits for the stragglers to stop
  (a short quiet period, bounded) before putting the previous hook back.
  """

  _QUIET_S = 0.2  # no late error for this long: the abandoned reads are done
  _MAX_WAIT_S = 2.0

  def __init__(self, step: int):
    self._step = step
    self._active = False
    self._dropped = 0
    self._last = 0.0

  def __enter__(self):
    self._previous = sys.unraisablehook
    self._active = True
    sys.unraisablehook = self._hook
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is not None:
      start = self._last = time.monotonic()
      while (time.monotonic() - self._last < self._QUIET_S
             and time.monotonic() - start < self._MAX_WAIT_S):
        time.sleep(0.02)
    self._active = False
    if sys.unraisablehook == self._hook:  # unless someone installed theirs since
      sys.unraisablehook = self._previous
    if self._dropped:
      logger.debug("Dropped %d 'Event loop is closed' errors of reads abandoned by the"
                   " failed restore of step %d.", self._dropped, self._step)

  def _hook(self, unraisable) -> None:
    if self._active and _is_closed_loop_callback(unraisable):
      self._last = time.monotonic()
      self._dropped += 1
      if self._dropped == 1:
        logger.debug("A read abandoned by the failed restore of step %d ended on a closed"
                     " event loop.", self._step, exc_info=(
                         unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
      return
    self._previous(unraisable)


def _is_closed_loop_callback(unraisable) -> bool:
  """Whether this is asyncio refusing a callback because its loop is closed."""
  if unraisable.object is not None or not isinstance(unraisable.exc_value, RuntimeError):
    return False
  if str(unraisable.exc_value) != "Event loop is closed":
    return False
  tb = unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  code = tb.tb_frame.f_code if tb is not None else None
  return (code is not None and code.co_name == "_check_closed"
          and os.path.basename(os.path.dirname(code.co_filename)) == "asyncio")


def _orbax_template(leaf: Any) -> Any:
  # StandardRestore rejects NumPy scalars (np.float32(0.0), ...) in templates
  # though StandardSave accepts them; 0-d arrays are fine.
  return np.asarray(leaf) if isinstance(leaf, np.generic) else leaf


def _like_template(leaf: Any, value: Any) -> Any:
  """Gives ``value`` the container type of the template ``leaf``.

  Orbax returns NumPy arrays for leaves that were saved from NumPy or Python
  scalars, even when the template asks for a ``ShapeDtypeStruct``.
  """
  if isinstance(leaf, jax.ShapeDtypeStruct) and not isinstance(value, jax.Array):
    return jax.device_put(np.asarray(value, dtype=leaf.dtype), leaf.sharding)
  if isinstance(leaf, np.generic):
    return leaf.dtype.type(value)
  return value


def _first_line(e: BaseException, limit: int = 400) -> str:
  text = str(e).strip().splitlines()
  # TensorStore appends its whole JSON spec to the message; the cause is before.
  line = text[0].split(" [tensorstore_spec")[0] if text else ""
  return line if len(line) <= limit else line[:limit] + "..."
