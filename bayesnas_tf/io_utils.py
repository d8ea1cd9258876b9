"""File helpers: outputs are replaced atomically, so a crash never leaves half a file."""

from __future__ import annotations

import os
import tempfile


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
