"""Metric and artefact writers: JSON lines, TensorBoard events, atomic JSON files.

Metrics go to two places. ``metrics.jsonl`` is the record that analysis
scripts read back (:func:`read_jsonl`); TensorBoard is for watching runs.
Writing both from one call keeps them in step.

Non-finite values: a diverging run is exactly when the metrics matter, so NaN
and infinities are written, not dropped. They use the JSON extensions that
Python's ``json`` module reads and writes by default (``NaN``, ``Infinity``,
``-Infinity``), so a metric column stays numeric. Strict JSON parsers (``jq``)
reject these tokens. TensorBoard gets only the finite values.

Only local paths are supported (plain ``open`` and tensorboardX's file writer).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from typing import Any, Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter

__all__ = ["MetricWriter", "read_jsonl", "write_json", "write_npz"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  """Appends JSON lines to ``<workdir>/metrics.jsonl`` and writes TensorBoard
  events (tensorboardX) under ``<workdir>/tensorboard``.

  Only process 0 (``jax.process_index() == 0``) writes; on other processes
  every method does nothing, so training code can call it unconditionally.
  A disabled writer creates no files or directories.

  Each :meth:`write_scalars` call appends one line and flushes it, so the file
  can be read while the run is going and survives a crash. After a resume
  from a checkpoint the file may hold the steps between that checkpoint and
  the crash twice; readers should keep the last line for each step.

  Args:
    workdir: Run directory; created if needed.
    enabled: Whether to write. ``None`` means "only on process 0".
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
    if enabled is None:
      enabled = jax.process_index() == 0
    self._enabled = enabled
    self._workdir = os.fspath(workdir)
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(self._workdir, exist_ok=True)
      path = os.path.join(self._workdir, METRICS_FILE)
      _drop_partial_last_line(path)
      self._jsonl = open(path, "a", encoding="utf-8")
      self._tb = SummaryWriter(logdir=os.path.join(self._workdir, TENSORBOARD_DIR))

  @property
  def enabled(self) -> bool:
    return self._enabled

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes one line ``{"step": step, **scalars}`` and the finite scalars to TensorBoard.

    Values may be Python numbers or NumPy/JAX arrays of size one; they are
    stored as Python floats. ``"step"`` is reserved.
    """
    if not self._enabled:
      return
    if "step" in scalars:
      raise ValueError('"step" is reserved; pass it as the `step` argument.')
    step = int(step)
    values = {name: _to_float(name, value) for name, value in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **values}, allow_nan=True) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      if math.isfinite(value):
        self._tb.add_scalar(name, value, global_step=step)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Writes images to TensorBoard.

    Each image is ``[H, W, C]`` (C = 1, 3 or 4) or ``[H, W]``, either uint8 or
    float in ``[0, 1]`` (values outside are clipped).
    """
    if not self._enabled:
      return
    for name, image in images.items():
      self._tb.add_image(name, _to_uint8_hwc(name, image), global_step=int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self._enabled and not self._jsonl.closed:
      self._jsonl.close()
      self._tb.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _replace_atomically(path: str | os.PathLike, write, binary: bool = False) -> None:
  """Calls ``write(file)`` on a temporary file in ``path``'s directory, syncs it and renames it
  over ``path``: a reader (or a resumed run) sees the old file or the new one, never half of
  one; on any failure the temporary file is removed. Parent directories are created."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as indented JSON, atomically (see ``_replace_atomically``).

  NumPy/JAX scalars become Python numbers and arrays become nested lists. Unlike
  :class:`MetricWriter` this writes on every process; call it from process 0
  only where that matters.
  """
  text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"
  _replace_atomically(path, lambda f: f.write(text))


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
  """Writes named arrays as an uncompressed .npz at exactly ``path``, atomically."""
  # np.savez on a file object: given a bare name it would append ".npz" itself.
  _replace_atomically(path, lambda f: np.savez(f, **arrays), binary=True)


def _drop_partial_last_line(path: str) -> None:
  """Cut a last line that a crash left without its newline (full disk, power loss), so that
  appending after a resume starts a fresh line; the resumed run logs that step again."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if not data.endswith(b"\n"):
      logger.warning("Dropping the unfinished last line of %s", path)
      f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """Reads a JSON-lines file written by :class:`MetricWriter`.

  Blank lines are skipped. A malformed *last* line (a write cut short by a
  crash) is dropped with a warning; a malformed line elsewhere raises.
  """
  with open(path, encoding="utf-8") as f:
    lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
  records = []
  for k, (lineno, line) in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if k == len(lines) - 1:
        logger.warning("Dropping truncated last line %d of %s: %s", lineno, path, e)
        break
      raise ValueError(f"{path}, line {lineno}: {e}") from e
  return records


def _to_float(name: str, value: Any) -> float:
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"Scalar {name!r} must have one element, got shape {array.shape}.")
  return float(array.reshape(()))


def _to_uint8_hwc(name: str, image: Any) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Image {name!r} must be [H, W, C] with C in (1, 3, 4), got {image.shape}.")
  if image.dtype == np.uint8:
    return image
  return np.round(np.clip(image.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def _json_default(obj: Any) -> Any:
  """Converts what ``json`` can't: NumPy/JAX scalars and arrays, paths."""
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
