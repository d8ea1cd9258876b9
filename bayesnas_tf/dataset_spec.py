"""The forms of --dataset, and the checks of a local path, TensorFlow-free.

main.py runs `check_local_dataset` before TensorFlow loads, so a mistyped
`npz:` or `folder:` path is answered at once; the loaders (data.py,
streaming_data.py) run the same checks, for callers of the library.
"""

from __future__ import annotations

import os

from bayesnas_tf.errors import DataError

NPZ_PREFIX = "npz:"
FOLDER_PREFIX = "folder:"
EMBEDDED_DIGITS = "digits"


def check_npz_path(path: str) -> str:
  """The user-expanded path of an existing .npz file, or a DataError."""
  path = os.path.expanduser(path)
  if not path:
    raise DataError("--dataset=npz: needs a file path; pass "
                    "--dataset=npz:/path/to/data.npz")
  if not os.path.isfile(path):
    raise DataError(f"npz file {path!r} does not exist; pass "
                    "--dataset=npz:PATH naming an existing .npz file")
  return path


def check_folder_root(root: str) -> str:
  """The user-expanded path of an existing image folder, or a DataError."""
  root = os.path.expanduser(root)
  if not root:
    raise DataError("--dataset=folder: needs a directory; pass "
                    "--dataset=folder:/path/with/train_and_test")
  if not os.path.isdir(root):
    raise DataError(f"image folder {root!r} does not exist; pass "
                    "--dataset=folder:PATH with PATH/train/<class>/*.jpg and "
                    "PATH/test/<class>/*.jpg")
  return root


def check_local_dataset(spec: str) -> None:
  """Checks the path of an `npz:` or `folder:` spec; other forms pass."""
  if spec.startswith(NPZ_PREFIX):
    check_npz_path(spec[len(NPZ_PREFIX):])
  elif spec.startswith(FOLDER_PREFIX):
    check_folder_root(spec[len(FOLDER_PREFIX):])
