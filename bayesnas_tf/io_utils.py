"""File helpers: outputs are replaced atomically, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional

from bayesnas_tf.errors import GenotypeError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it over."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      if not text.endswith("\n"):
        f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def json_provenance(search: Any) -> Optional[Dict[str, Any]]:
  """A genotype's `search` provenance mapping as plain JSON types (numpy
  scalars ok); None stays None."""
  if search is None:
    return None
  if not isinstance(search, Mapping):
    raise GenotypeError(
        f"genotype field 'search' must be an object or null; received "
        f"{search!r}")

  def to_builtin(value):
    # Search metadata often carries numpy scalars (lambda, thresholds).
    if hasattr(value, "tolist"):
      return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r}")

  try:
    return json.loads(json.dumps(dict(search), default=to_builtin))
  except (TypeError, ValueError) as e:
    raise GenotypeError(
        f"genotype field 'search' must hold only JSON values (numbers, "
        f"strings, lists, objects); it holds a {e}") from None


def parse_json(text: str, source: str) -> Any:
  """The JSON value of `text`; GenotypeError names `source` and the position
  when it is not JSON."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise GenotypeError(
        f"{source} is not valid JSON ({e.msg} at line {e.lineno}, column "
        f"{e.colno}); fix the file or regenerate it") from None
