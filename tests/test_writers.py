"""Tests for bdbounds.writers: metrics.jsonl, TensorBoard events, atomic JSON."""

import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from bdbounds.writers import MetricWriter, read_jsonl, write_json


def event_files(workdir):
  return [
      os.path.join(root, f)
      for root, _, files in os.walk(os.path.join(workdir, "tensorboard"))
      for f in files
      if f.startswith("events.out.tfevents")
  ]


def read_events(path):
  """Parses a TFRecord event file (length, crc, payload, crc per record)."""
  events = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,) = struct.unpack("<Q", header[:8])
      event = event_pb2.Event()
      event.ParseFromString(f.read(length))
      f.read(4)
      events.append(event)
  return events


def test_scalars_round_trip(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(1, {"loss": 0.5, "acc": np.float32(0.25)})
    writer.write_scalars(2, {"loss": jnp.asarray(0.125), "grad_norm": jnp.ones((1,))})
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert records == [
      {"step": 1, "loss": 0.5, "acc": 0.25},
      {"step": 2, "loss": 0.125, "grad_norm": 1.0},
  ]
  assert all(type(v) is float for r in records for k, v in r.items() if k != "step")
  assert list(records[0]) == ["step", "loss", "acc"]


def test_appends_across_writers(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(1, {"x": 1.0})
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(2, {"x": 2.0})
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_non_finite_values_are_kept(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(3, {"nan": float("nan"), "inf": jnp.inf, "ninf": -np.inf, "ok": 1.0})
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" in text and "Infinity" in text and "-Infinity" in text
  (record,) = read_jsonl(tmp_path / "metrics.jsonl")
  assert math.isnan(record["nan"])
  assert record["inf"] == math.inf and record["ninf"] == -math.inf


def test_rejects_bad_scalars(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    with pytest.raises(ValueError, match="one element"):
      writer.write_scalars(0, {"vec": np.zeros(3)})
    with pytest.raises(ValueError, match="reserved"):
      writer.write_scalars(0, {"step": 1.0})


def test_tensorboard_events(tmp_path):
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(1, {"loss": 1.0, "bad": float("nan")})
    writer.write_images(1, {
        "rgb_uint8": np.zeros((8, 8, 3), np.uint8),
        "gray_float": np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1),
        "plain_2d": np.ones((4, 5)),
    })
    writer.flush()
  files = event_files(tmp_path)
  assert len(files) == 1 and os.path.getsize(files[0]) > 0
  scalars, images = {}, {}
  for event in read_events(files[0]):
    for value in event.summary.value:
      if value.HasField("image"):
        images[value.tag] = (value.image.height, value.image.width, value.image.colorspace)
      else:
        scalars[value.tag] = (event.step, value.simple_value)
  assert scalars == {"loss": (1, 1.0)}  # NaN is not sent to TensorBoard
  assert images["rgb_uint8"] == (8, 8, 3)
  assert images["gray_float"][:2] == (8, 8)
  assert images["plain_2d"][:2] == (4, 5)


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  writer = MetricWriter(workdir, enabled=False)
  assert not writer.enabled
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_images(1, {"img": np.zeros((2, 2, 3), np.uint8)})
  writer.flush()
  writer.close()
  assert not workdir.exists()


def test_write_json_converts_and_is_atomic(tmp_path):
  path = tmp_path / "sub" / "summary.json"
  obj = {
      "f32": np.float32(1.5),
      "i64": np.int64(7),
      "bool": np.bool_(True),
      "array": np.arange(3),
      "jax": jnp.asarray([[1.0, 2.0]]),
      "jax_scalar": jnp.asarray(3),
      "nested": [{"x": np.float64(0.25)}],
  }
  write_json(path, obj)
  assert json.loads(path.read_text()) == {
      "f32": 1.5, "i64": 7, "bool": True, "array": [0, 1, 2],
      "jax": [[1.0, 2.0]], "jax_scalar": 3, "nested": [{"x": 0.25}],
  }
  assert path.read_text().startswith("{\n  ")  # indented

  # Overwrite; a failed write leaves the old file intact and no temp files.
  write_json(path, {"version": 2})
  with pytest.raises(TypeError, match="not JSON serialisable"):
    write_json(path, {"bad": object()})
  assert json.loads(path.read_text()) == {"version": 2}
  assert os.listdir(path.parent) == ["summary.json"]


def test_read_jsonl_tolerates_truncated_last_line(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "x": 1.0}\n\n{"step": 2, "x": 2.0}\n{"step": 3, "x"')
  assert read_jsonl(path) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]
  assert "truncated" in caplog.text
  path.write_text('{"step": 1\n{"step": 2}\n')
  with pytest.raises(ValueError, match="line 1"):
    read_jsonl(path)


def test_a_writer_reopened_after_a_cut_line_starts_a_clean_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')  # a crash in the middle of a write
  with MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(2, {"x": 2.0})
  assert [r["step"] for r in read_jsonl(path)] == [1, 2]
  assert path.read_text().endswith('"x": 2.0}\n')
