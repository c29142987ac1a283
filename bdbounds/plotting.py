"""Figures for 2-D densities and image samples, rendered off-screen.

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas
rather than through ``pyplot``: nothing needs a display, nothing is added to
pyplot's global list of open figures (so nothing leaks across a long run and
there is nothing left to close), and the process-wide backend is left alone.

Each figure is rendered once; the PNG on disk and the array returned for
TensorBoard are the same pixels.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["image_grid", "plot_density_panels", "save_png"]

_PANEL_INCHES = 3.2
_DPI = 100
_CMAP = "viridis"  # perceptually uniform


def plot_density_panels(
    path: str | os.PathLike | None = None,
    *,
    xs: np.ndarray,
    ys: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray]],
    points: Sequence[tuple[str, np.ndarray]] = (),
    title: str = "",
) -> np.ndarray:
  """Draws 2-D densities and point clouds side by side (and saves a PNG if given a path).

  Density panels come first, then point panels, all over the same box so
  they can be compared by eye.

  Each density is given as a log-density on the grid ``xs`` x ``ys`` (shape
  ``[len(ys), len(xs)]``, rows indexed by y, e.g. from ``meshgrid(xs, ys)``)
  and drawn as ``exp(log p - max log p)`` on a linear colour scale from 0 to
  its maximum. Subtracting the maximum is a constant factor, which leaves the
  picture of ``exp(log p)`` unchanged, avoids overflow, and lets unnormalised
  log-densities (negative energies) be passed directly. The density is shown at
  temperature 1, never sharpened or tempered, so what is visible is what the
  model assigns. Non-finite values (``-inf``, NaN) show as zero density.

  Args:
    path: Where to write the PNG (parent directories are created), or None.
    xs: Increasing x coordinates of the grid columns (cell centres).
    ys: Increasing y coordinates of the grid rows.
    panels: ``(title, log_density)`` pairs.
    points: ``(title, points)`` pairs; points have shape ``[N, 2]``.
    title: Figure title.

  Returns:
    The rendered figure as an RGB uint8 array ``[H, W, 3]``.
  """
  xs = np.asarray(xs, dtype=np.float64)
  ys = np.asarray(ys, dtype=np.float64)
  if xs.ndim != 1 or ys.ndim != 1 or len(xs) < 2 or len(ys) < 2:
    raise ValueError("xs and ys must be 1-D with at least two entries.")
  if not panels and not points:
    raise ValueError("Nothing to plot: give at least one density or point panel.")
  extent = (*_edges(xs), *_edges(ys))

  n = len(panels) + len(points)
  fig = Figure(
      figsize=(_PANEL_INCHES * n, _PANEL_INCHES + (0.3 if title else 0.0)),
      dpi=_DPI,
      layout="constrained",
  )
  canvas = FigureCanvasAgg(fig)
  axes = fig.subplots(1, n, squeeze=False)[0]
  for ax, (name, log_density) in zip(axes, panels):
    log_density = np.asarray(log_density, dtype=np.float64)
    if log_density.shape != (len(ys), len(xs)):
      raise ValueError(
          f"Density {name!r} has shape {log_density.shape}; expected"
          f" (len(ys), len(xs)) = {(len(ys), len(xs))}."
      )
    ax.imshow(
        _relative_density(log_density), origin="lower", extent=extent,
        cmap=_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto",
    )
    _style(ax, name, extent)
  for ax, (name, pts) in zip(axes[len(panels):], points):
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
      raise ValueError(f"Points {name!r} must have shape [N, 2], got {pts.shape}.")
    ax.scatter(pts[:, 0], pts[:, 1], s=1.0, alpha=0.5, linewidths=0, rasterized=True)
    _style(ax, name, extent)
  if title:
    fig.suptitle(title)

  canvas.draw()
  image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
  if path is not None:
    save_png(path, image)
  return image


def image_grid(
    images: np.ndarray,
    *,
    ncols: int | None = None,
    padding: int = 1,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
  """Tiles a batch of images into one uint8 image.

  Images are placed row by row with ``padding`` black pixels between them and
  around the border (so an ``R x C`` grid of ``H x W`` images is
  ``R * (H + padding) + padding`` pixels high); unused cells stay black.

  Args:
    images: ``[N, H, W, C]`` with C = 1 or 3 (or ``[N, H, W]``), float or uint8.
    ncols: Images per row; default ``ceil(sqrt(N))``.
    padding: Pixels between and around images.
    value_range: ``(low, high)`` of float inputs, mapped to 0..255 (values
      outside are clipped). By default ``(-1, 1)`` if any value is negative,
      else ``(0, 1)``. Pass it explicitly when a batch in ``[-1, 1]`` could
      happen to be all non-negative. Ignored for uint8 input.

  Returns:
    ``[H', W', C]`` uint8.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
    raise ValueError(f"images must be [N, H, W, C] with N > 0 and C in (1, 3), got {images.shape}.")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}.")
  if images.dtype != np.uint8:
    if value_range is None:
      value_range = (-1.0, 1.0) if np.nanmin(images) < 0 else (0.0, 1.0)
    images = _to_uint8(images, value_range)

  n, h, w, c = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), np.uint8)
  for i in range(n):
    row, col = divmod(i, ncols)
    top, left = padding + row * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Saves ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` uint8 (or float in [0, 1]) as PNG.

  Parent directories are created.
  """
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
    raise ValueError(f"image must be [H, W], [H, W, 1] or [H, W, 3], got {image.shape}.")
  if image.dtype != np.uint8:
    image = _to_uint8(image, (0.0, 1.0))
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(image).save(path, format="PNG")


def _relative_density(log_density: np.ndarray) -> np.ndarray:
  """``exp(log p - max log p)``, with non-finite entries (and an all-``-inf`` grid) as 0."""
  finite = np.isfinite(log_density)
  if not finite.any():
    return np.zeros_like(log_density)
  shifted = np.where(finite, log_density - log_density[finite].max(), -np.inf)
  return np.exp(shifted)


def _edges(centres: np.ndarray) -> tuple[float, float]:
  """Outer edges of a grid of cell centres, so pixels sit on their coordinates."""
  return (
      float(centres[0] - (centres[1] - centres[0]) / 2),
      float(centres[-1] + (centres[-1] - centres[-2]) / 2),
  )


def _style(ax, name: str, extent: tuple[float, float, float, float]) -> None:
  ax.set_title(name)
  ax.set_xlim(extent[0], extent[1])
  ax.set_ylim(extent[2], extent[3])
  ax.set_aspect("equal")
  ax.tick_params(labelsize=7)


def _to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
  low, high = value_range
  scaled = (images.astype(np.float32) - low) / (high - low)
  scaled = np.nan_to_num(scaled, nan=0.0)
  return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
