"""Figures of a sweep's results: a grid of 2-D densities, energy-gap curves, panels of images."""

from __future__ import annotations

import collections
from typing import Callable, Mapping, Sequence

import numpy as np

from bdbounds.experiments.sweep import tables
from bdbounds.objectives import LOWER_BOUNDS, UPPER_BOUNDS

DPI = 80


def new_figure(width: float, height: float):
  """A matplotlib figure on the Agg canvas (no display, no pyplot state shared between workers)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def relative_density(log_density: np.ndarray) -> np.ndarray:
  """exp(log p − max log p): the density at temperature 1 up to a constant; non-finite -> 0."""
  lp = np.where(np.isfinite(log_density), log_density, -np.inf)
  top = np.max(lp)
  return np.exp(lp - top) if np.isfinite(top) else np.zeros_like(lp)


def _show_density(ax, log_density, grid) -> None:
  extent = (grid["xs"][0], grid["xs"][-1], grid["ys"][0], grid["ys"][-1])
  ax.imshow(relative_density(log_density), origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=1,
            interpolation="nearest", aspect="equal")


def _grey_panel(ax, text: str) -> None:
  ax.set_facecolor("0.85")
  ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7)


def plot_density_grid(results: Sequence[Mapping], load_grid: Callable[[Mapping], Mapping | None], path: str) -> None:
  """Rows data sets; columns the data density and each pairing's learned density (lowest seed).

  `load_grid(result)` gives a run's grid (`xs`, `ys`, `model_log_density` and optionally
  `data_log_density`, log-densities on the cells) or None where it has none."""
  datasets, pairs = tables.order(results)
  first = {}
  for r in sorted(results, key=lambda r: r["seed"]):
    first.setdefault((r["dataset"], r["lower"], r["upper"]), r)
  size = 1.15
  fig = new_figure(size * (len(pairs) + 1) + 0.3, size * len(datasets) + 0.9)
  axes = fig.subplots(len(datasets), len(pairs) + 1, squeeze=False)
  for i, dataset in enumerate(datasets):
    data_drawn = False
    for j, (lower, upper) in enumerate(pairs, start=1):
      ax = axes[i, j]
      r = first.get((dataset, lower, upper))
      grid = load_grid(r) if r else None
      if grid is not None:
        _show_density(ax, grid["model_log_density"], grid)
        if not data_drawn and "data_log_density" in grid:
          _show_density(axes[i, 0], grid["data_log_density"], grid)
          data_drawn = True
        label = f"KL {r['kl_data_model']:.2f}" if r.get("kl_data_model") is not None else f"NLL {r['nll']:.2f}"
        if r["collapsed"]:
          label += " collapsed"
        ax.text(0.03, 0.03, label, transform=ax.transAxes, fontsize=6, color="white")
      else:
        _grey_panel(ax, r["status"] if r else "no run")
      if i == 0:
        ax.set_title(f"{lower}\n+ {upper}", fontsize=7)
    if not data_drawn:
      _grey_panel(axes[i, 0], "no density")
    axes[i, 0].set_ylabel(dataset, fontsize=8)
    if i == 0:
      axes[i, 0].set_title("data", fontsize=7)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("Learned density at temperature 1, exp(−E)/Z (lowest seed)", fontsize=9)
  fig.savefig(path, dpi=DPI)


def mean_curves(results: Sequence[Mapping]) -> dict:
  """`{(data set, lower, upper): (steps, mean gap)}` over the seeds whose curves reached the
  longest one's last step (a diverged run's curve stops early)."""
  groups = collections.defaultdict(list)
  for r in results:
    c = r.get("energy_gap_curve") or {}
    if c.get("step"):
      groups[(r["dataset"], r["lower"], r["upper"])].append((tuple(c["step"]), c["energy_gap"]))
  curves = {}
  for key, runs in groups.items():
    steps = max((s for s, _ in runs), key=lambda s: (s[-1], len(s)))
    gaps = np.asarray([g for s, g in runs if s == steps], np.float64)
    curves[key] = (np.asarray(steps), gaps.mean(axis=0))
  return curves


def plot_energy_gap(results: Sequence[Mapping], path: str) -> None:
  """One panel per data set; colour = upper bound, line style = lower bound."""
  datasets, pairs = tables.order(results)
  curves = mean_curves(results)
  ncols = min(3, len(datasets))
  nrows = -(-len(datasets) // ncols)
  fig = new_figure(max(4.0 * ncols, 10.0), 2.8 * nrows + 1.3)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  colours = {u: f"C{i}" for i, u in enumerate(UPPER_BOUNDS)}
  styles = {lower: s for lower, s in zip(LOWER_BOUNDS, ("-", "--", ":"))}
  for ax, dataset in zip(axes.flat, datasets):
    values = []
    for lower, upper in pairs:
      if (dataset, lower, upper) in curves:
        steps, gap = curves[(dataset, lower, upper)]
        ax.plot(steps, gap, color=colours.get(upper, "k"), linestyle=styles.get(lower, "-."), linewidth=1,
                label=f"{lower} + {upper}")
        values.append(gap[np.isfinite(gap)])
    values = np.concatenate(values) if values else np.zeros(0)
    if values.size:  # a few wild values should not flatten every other curve
      lo, hi = np.quantile(values, [0.01, 0.99])
      pad = 0.1 * (hi - lo) + 1e-6
      ax.set_ylim(lo - pad, hi + pad)
    ax.axhline(0.0, color="0.6", linewidth=0.5)
    ax.set_title(dataset, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("E_data[E] − E_q[E]", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(datasets):]:
    ax.set_axis_off()
  legend = {}
  for ax in axes.flat:  # every pairing once, even where the first panel misses one
    for handle, label in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  labels = [f"{lower} + {upper}" for lower, upper in pairs if f"{lower} + {upper}" in legend]
  if labels:
    # One column per lower bound (the handles come lower-major, and columns fill first).
    fig.legend([legend[k] for k in labels], labels, loc="outside lower center",
               ncols=len({lab.split(" + ")[0] for lab in labels}), fontsize=7)
  fig.suptitle("Energy gap over training (mean over seeds that finished)", fontsize=9)
  fig.savefig(path, dpi=DPI)


def plot_image_panels(panels: Sequence[tuple[str, np.ndarray]], path: str, ncols: int = 5) -> None:
  """One titled panel per `(title, image [H, W, C] uint8)`, `ncols` to a row."""
  ncols = min(ncols, len(panels))
  nrows = -(-len(panels) // ncols)
  fig = new_figure(2.4 * ncols, 2.7 * nrows)
  for i, (title, image) in enumerate(panels):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
  fig.savefig(path)
