"""The forms of --dataset, and the checks of a local path, TensorFlow-free.

The command line (cli.py) runs `check_local_dataset` before TensorFlow
loads, so a mistyped `npz:` or `folder:` path is answered at once; the
loaders (arrays.py, streaming.py) run the same checks, for callers of the
library.
"""

from __future__ import annotations

import os

from bayesnas_tf.errors import DataError

NPZ_PREFIX = "npz:"
FOLDER_PREFIX = "folder:"
EMBEDDED_DIGITS = "digits"


def _existing(prefix: str, path: str, exists, what: str, example: str,
              noun: str, layout: str) -> str:
  path = os.path.expanduser(path)
  if not path:
    raise DataError(f"--dataset={prefix} needs {what}; pass --dataset={prefix}{example}")
  if not exists(path):
    raise DataError(f"{noun} {path!r} does not exist; pass --dataset={prefix}PATH {layout}")
  return path


def check_npz_path(path: str) -> str:
  """The user-expanded path of an existing .npz file, or a DataError."""
  return _existing(NPZ_PREFIX, path, os.path.isfile, "a file path",
                   "/path/to/data.npz", "npz file", "naming an existing .npz file")


def check_folder_root(root: str) -> str:
  """The user-expanded path of an existing image folder, or a DataError."""
  return _existing(FOLDER_PREFIX, root, os.path.isdir, "a directory",
                   "/path/with/train_and_test", "image folder",
                   "with PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg")


def check_local_dataset(spec: str) -> None:
  """Checks the path of an `npz:` or `folder:` spec; other forms pass."""
  if spec.startswith(NPZ_PREFIX):
    check_npz_path(spec[len(NPZ_PREFIX):])
  elif spec.startswith(FOLDER_PREFIX):
    check_folder_root(spec[len(FOLDER_PREFIX):])
