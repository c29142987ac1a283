"""Research experiments over the trainer: sweeps of bound pairings and measurements of the bounds."""

import csv
import io
from typing import Mapping, Sequence


def csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
  """`rows` as CSV text with a header, in the given order; missing or None values empty."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
  return buffer.getvalue()
