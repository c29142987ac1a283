"""Tests for bdbounds.plotting: density panels, image grids, PNG files."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from bdbounds.plotting import image_grid, plot_density_panels, save_png


def gaussian_log_density(xs, ys, mean=(0.0, 0.0), std=1.0):
  x, y = np.meshgrid(xs, ys)  # [len(ys), len(xs)]
  return -((x - mean[0]) ** 2 + (y - mean[1]) ** 2) / (2 * std**2) - np.log(2 * np.pi * std**2)


def test_density_panels_written_and_returned(tmp_path):
  xs = np.linspace(-4, 4, 64)
  ys = np.linspace(-3, 3, 48)
  rng = np.random.default_rng(0)
  path = tmp_path / "figs" / "step_100.png"
  figures_before = plt.get_fignums()
  image = plot_density_panels(
      path,
      xs=xs,
      ys=ys,
      panels=[
          ("data", gaussian_log_density(xs, ys)),
          ("model (unnormalised)", gaussian_log_density(xs, ys, mean=(1, 0)) + 500.0),
          ("empty", np.full((48, 64), -np.inf)),
      ],
      points=[("samples", rng.normal(size=(500, 2)))],
      title="step 100",
  )
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert image.shape[1] > image.shape[0]  # four panels side by side
  assert image.std() > 0
  with Image.open(path) as png:
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), image)
  assert plt.get_fignums() == figures_before  # no pyplot figures left open


def test_density_panels_shape_check(tmp_path):
  xs, ys = np.linspace(0, 1, 5), np.linspace(0, 1, 4)
  with pytest.raises(ValueError, match="expected"):
    plot_density_panels(tmp_path / "x.png", xs=xs, ys=ys, panels=[("wrong", np.zeros((5, 4)))])


def test_image_grid_arrangement_and_values():
  h, w = 4, 5
  # Image i is constant with value -1 + 0.4 * i: -1, -0.6, ..., 1.
  values = np.linspace(-1, 1, 6)
  images = np.broadcast_to(values[:, None, None, None], (6, h, w, 3)).astype(np.float32)
  grid = image_grid(images, ncols=3, padding=1)
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * (h + 1) + 1, 3 * (w + 1) + 1, 3)
  expected = np.round((values + 1) / 2 * 255).astype(np.uint8)
  for i in range(6):
    row, col = divmod(i, 3)
    top, left = 1 + row * (h + 1), 1 + col * (w + 1)
    assert (grid[top:top + h, left:left + w] == expected[i]).all()
  # Padding rows/columns and the border are black.
  assert (grid[0] == 0).all() and (grid[:, 0] == 0).all() and (grid[h + 1] == 0).all()
  assert expected[0] == 0 and expected[-1] == 255


def test_image_grid_defaults_and_ranges():
  ones = np.ones((5, 2, 2, 1), np.float32)
  grid = image_grid(ones, padding=0)  # [0, 1] input, ncols = ceil(sqrt(5)) = 3
  assert grid.shape == (4, 6, 1)
  assert (grid[:2, :6] == 255).all() and (grid[2:, :4] == 255).all()
  assert (grid[2:, 4:] == 0).all()  # the unused sixth cell
  half = np.full((1, 2, 2, 1), 0.5, np.float32)
  assert image_grid(half, padding=0)[0, 0, 0] == 128
  assert image_grid(half, padding=0, value_range=(-1, 1))[0, 0, 0] == 191
  assert image_grid(np.full((2, 3, 3), 7, np.uint8)).max() == 7  # uint8 passes through


def test_save_png(tmp_path):
  rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  save_png(tmp_path / "a" / "rgb.png", rgb)
  with Image.open(tmp_path / "a" / "rgb.png") as png:
    np.testing.assert_array_equal(np.asarray(png), rgb)
  save_png(tmp_path / "gray.png", np.full((3, 3, 1), 1.0))
  with Image.open(tmp_path / "gray.png") as png:
    assert png.mode == "L" and np.asarray(png).min() == 255
