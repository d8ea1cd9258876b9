"""Looking a found cell up in a benchmark table (e.g. NAS-Bench-201's).

A table is a CSV file with a column `arch` (the cell's string, as the
benchmark writes it) and one accuracy column (`*accuracy*`, or the only
other column). A search with `--benchmark_table` reads it before it starts
(a missing or malformed table stops the run with one line before any work)
and, when it has finished and written its outputs, reports the accuracy of
the cell it found and its percentile among all cells of the table.

The percentile is the share of the table's cells with a lower accuracy,
ties counted half: the best cell of NAS-Bench-201 is at 99.997, the median
cell at 50. TensorFlow-free.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import math
import os
from typing import Any, Dict, List, Tuple

from bayesnas_tf.errors import ConfigError

ARCH_COLUMN = "arch"


@dataclasses.dataclass(frozen=True)
class BenchmarkTable:
  path: str
  column: str
  accuracies: Dict[str, float]
  _sorted: Tuple[float, ...] = dataclasses.field(repr=False, default=())

  @classmethod
  def load(cls, path: str) -> "BenchmarkTable":
    """Reads and checks the table; ConfigError (one line) when it is missing
    or malformed."""
    where = f"--benchmark_table={path}"
    if not os.path.isfile(path):
      raise ConfigError(f"{where}: no such file; pass a CSV with an "
                        f"'{ARCH_COLUMN}' column and an accuracy column")
    try:
      with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
      raise ConfigError(f"{where}: cannot be read as CSV ({error})") from None
    if not header or ARCH_COLUMN not in header:
      raise ConfigError(
          f"{where}: the first line must name the columns, one of them "
          f"'{ARCH_COLUMN}'; found {header!r}")
    column = _accuracy_column(header, where)
    arch_index, acc_index = header.index(ARCH_COLUMN), header.index(column)
    accuracies: Dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
      if not row:
        continue
      if len(row) != len(header):
        raise ConfigError(f"{where}: line {line} has {len(row)} fields, the "
                          f"header {len(header)}")
      try:
        value = float(row[acc_index])
      except ValueError:
        value = math.nan
      if not math.isfinite(value):
        raise ConfigError(f"{where}: line {line}: {column} is "
                          f"{row[acc_index]!r}, not a number")
      arch = row[arch_index]
      if arch in accuracies:
        raise ConfigError(f"{where}: line {line}: {arch} is listed twice")
      accuracies[arch] = value
    if not accuracies:
      raise ConfigError(f"{where}: the table lists no cell")
    return cls(path, column, accuracies, tuple(sorted(accuracies.values())))

  def lookup(self, arch: str) -> Dict[str, Any]:
    """{"table", "column", "accuracy", "percentile", "rank", "cells", "best"}
    of `arch`; ConfigError (one line) when the table does not list it."""
    if arch not in self.accuracies:
      raise ConfigError(f"the benchmark table {self.path} does not list the "
                        f"found cell {arch}")
    value = self.accuracies[arch]
    below = bisect.bisect_left(self._sorted, value)
    ties = bisect.bisect_right(self._sorted, value) - below
    n = len(self._sorted)
    return {"table": self.path, "column": self.column,
            "accuracy": value,
            "percentile": round(100.0 * (below + 0.5 * ties) / n, 3),
            "rank": n - below - ties + 1, "cells": n,
            "best": self._sorted[-1]}


def _accuracy_column(header: List[str], where: str) -> str:
  others = [c for c in header if c != ARCH_COLUMN]
  named = [c for c in others if "acc" in c.lower()]
  if len(named) == 1:
    return named[0]
  if len(others) == 1:
    return others[0]
  raise ConfigError(
      f"{where}: cannot tell which column holds the accuracy among "
      f"{others}; keep '{ARCH_COLUMN}' and one accuracy column")
