"""File helpers: outputs are replaced atomically, so a crash never leaves
half a file, and a failed write is one `OutputWriteError` naming the path."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Dict, Iterator, Mapping, Optional

from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.errors import OutputWriteError
from bayesnas_tf.errors import failure_reason

# The prefix of atomic_write_text's temporary files: a run that was killed
# while writing leaves one, which the next write of the same file removes.
TEMP_PREFIX = ".tmp_"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8, ending in a newline) atomically: see
  `atomic_write_bytes`."""
  if not text.endswith("\n"):
    text += "\n"
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it over.

  On failure (no space, permission, a vanished folder) the temporary file
  is removed, `path` keeps its previous content, and `OutputWriteError`
  names `path` and the reason.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  tmp = None
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX,
                               suffix=os.path.basename(path))
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as error:
    remove_quietly(tmp)
    raise OutputWriteError(path, failure_reason(error)) from None
  except BaseException:
    remove_quietly(tmp)
    raise


def remove_quietly(path: Optional[str]) -> None:
  """Removes the file `path` if it exists; a failure to remove is ignored
  (it is a leftover, and the error that led here is the one to report)."""
  if path:
    with contextlib.suppress(OSError):
      os.remove(path)


def is_tensorflow_error(error: BaseException) -> bool:
  """Whether `error` is a TensorFlow OpError (without importing TensorFlow:
  this module stays TensorFlow-free)."""
  tf = sys.modules.get("tensorflow")
  return tf is not None and isinstance(error, tf.errors.OpError)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, hint: Optional[str] = None) -> Iterator[None]:
  """Turns a failure of the block, which writes `path`, into OutputWriteError.

  For writers that are not `atomic_write_text`: checkpoints, TensorBoard
  events, SavedModels, .keras files, pictures. OSError and TensorFlow's
  errors (ResourceExhaustedError "No space left on device", ...) become one
  error naming `path` and the operating system's reason.
  """
  try:
    yield
  except OutputWriteError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    if isinstance(error, OSError) or is_tensorflow_error(error):
      raise OutputWriteError(os.fspath(path), failure_reason(error), hint) from None
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
