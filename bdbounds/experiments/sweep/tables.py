"""Tables of a sweep's results (pure): statistics over seeds, grouping into cells, CSV and Markdown."""

from __future__ import annotations

import collections
import csv
import io
import math
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from bdbounds.data import IMAGE_DATASETS, TOY_DATASETS
from bdbounds.experiments.sweep.grid import PAIRINGS

DATASET_ORDER = TOY_DATASETS + IMAGE_DATASETS


def is_finite(value) -> bool:
  """A real number that is finite (not a bool, not None, not NaN or ±inf)."""
  numeric = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
  return numeric and math.isfinite(value)


class MeanStd(NamedTuple):
  mean: float | None
  std: float | None   # sample standard deviation (ddof 1); None for fewer than two values
  count: int


def mean_std(values: Iterable) -> MeanStd:
  """Mean and sample standard deviation of `values` in float64, None entries (missing measures)
  left out. A NaN is kept and makes the mean NaN: a value that is not finite must show."""
  v = np.asarray([x for x in values if x is not None], np.float64).ravel()
  if v.size == 0:
    return MeanStd(None, None, 0)
  return MeanStd(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None, int(v.size))


def _rank(order: Sequence):
  return lambda x: (order.index(x) if x in order else len(order), x)


def order(results: Iterable[Mapping]) -> tuple[list[str], list[tuple[str, str]]]:
  """Data sets and pairings present, in the order of DATASET_ORDER and PAIRINGS (others after, by name)."""
  results = list(results)
  datasets = {r["dataset"] for r in results}
  pairs = {(r["lower"], r["upper"]) for r in results}
  return sorted(datasets, key=_rank(DATASET_ORDER)), sorted(pairs, key=_rank(PAIRINGS))


def sort_key(r: Mapping):
  """Table order of one run's row: data set, pairing, seed."""
  return (*_rank(DATASET_ORDER)(r["dataset"]), *_rank(PAIRINGS)((r["lower"], r["upper"])), r["seed"])


def grouped_runs(results: Sequence[Mapping]) -> Iterator[tuple[str, str, str, list[Mapping]]]:
  """`(data set, lower, upper, runs)` for every cell of the grid that has runs, in table order."""
  datasets, pairs = order(results)
  groups = collections.defaultdict(list)
  for r in results:
    groups[(r["dataset"], r["lower"], r["upper"])].append(r)
  for dataset in datasets:
    for lower, upper in pairs:
      if (dataset, lower, upper) in groups:
        yield dataset, lower, upper, groups[(dataset, lower, upper)]


def median_ms_per_step(runs: Iterable[Mapping]) -> float | None:
  """Median over runs of each run's median step time, in ms."""
  times = [r["seconds_per_step"] for r in runs if is_finite(r.get("seconds_per_step"))]
  return 1e3 * float(np.median(times)) if times else None


def aggregate(results: Sequence[Mapping], measures: Sequence[str], flags: Sequence[str] = ("diverged",)) -> list[dict]:
  """One row per data set × pairing: `runs`, `finished` (not diverged), the count of runs with
  each of `flags` set, `<measure>_mean` and `_std` over the finished runs, and `ms_per_step`."""
  rows = []
  for dataset, lower, upper, runs in grouped_runs(results):
    kept = [r for r in runs if not r["diverged"]]
    row = {"dataset": dataset, "lower": lower, "upper": upper, "runs": len(runs), "finished": len(kept)}
    row.update({flag: sum(bool(r[flag]) for r in runs) for flag in flags})
    for name in measures:
      row[f"{name}_mean"], row[f"{name}_std"], _ = mean_std(r.get(name) for r in kept)
    row["ms_per_step"] = median_ms_per_step(runs)
    rows.append(row)
  return rows


def format_number(x, digits: int = 3) -> str:
  return f"{x:.{digits}f}" if is_finite(x) else "—"


def format_mean_std(mean, std, digits: int = 3, std_format: str | None = None) -> str:
  """`mean ± std` (std as `std_format`, default the mean's digits), the mean alone when the std is
  missing, — when the mean is."""
  if not is_finite(mean):
    return "—"
  if not is_finite(std):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:{std_format or f'.{digits}f'}}"


def escape_cell(text, limit: int = 200) -> str:
  """One line of at most `limit` characters, safe inside a Markdown table."""
  return " ".join(str(text or "").split())[:limit].replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
  """Lines of a Markdown table; `align` has one letter per column, l(eft) or r(ight)."""
  line = lambda cells: "| " + " | ".join(cells) + " |"
  return [line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align), *map(line, rows)]


def diverged_runs_markdown(results: Sequence[Mapping]) -> list[str]:
  """Lines of a "Diverged runs" section in table order (none if no run diverged)."""
  failed = sorted((r for r in results if r["diverged"]), key=sort_key)
  if not failed:
    return []
  rows = [(r["dataset"], r["pairing"], str(r["seed"]), str(r["last_step"]), escape_cell(r.get("error")))
          for r in failed]
  return ["", "## Diverged runs", "",
          *markdown_table(("data set", "pairing", "seed", "last logged step", "reason"), rows, "llrrl")]


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
  """`rows` as CSV text with a header, in the given order; missing or None values empty."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
  return buffer.getvalue()


def results_csv(results: Sequence[Mapping], columns: Sequence[str]) -> str:
  """One row per run, in table order; missing values empty."""
  return csv_text(sorted(results, key=sort_key), columns)
