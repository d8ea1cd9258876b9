"""Checkpoints: written so that a failed save leaves nothing behind, and
checked before they are restored.

Keras 3 tracks sublayers kept in Python lists with its own `TrackedList`,
which TensorFlow's object-based checkpointing does not follow: layers nested
in lists (our cells, edges, candidate ops) would silently lose their
non-trainable state (BN moving statistics, gate masks) on restore. So models
are checkpointed as a flat {variable path: variable} mapping, which covers
every variable by construction.

A checkpoint can be damaged on disk (a crash during a copy, a bad disk, a
save cut short by a full disk). Before anything is restored into the live
variables, every tensor of the candidate is read once, which makes
TensorFlow check its size and checksum (`unreadable_reason`); an unreadable
checkpoint is skipped with one warning line and the next older one is
tried, so a half-read file never leaves variables half-assigned. The
candidates are the checkpoint state file's list and every `ckpt-N.index`
in the folder, latest written first (`candidates`), so a damaged state
file loses nothing either.

A save goes through `save`: TensorFlow writes `ckpt-N_temp/` and then
renames it into `ckpt-N.*`; when that fails (no space, permission, a
vanished folder) the temporary folder and any unreadable part of ckpt-N are
removed, the previous checkpoints stay, and `OutputWriteError` names the
checkpoint and the reason. `make_manager` removes what a killed save left.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from typing import Dict, List, Optional

from absl import logging
import keras
import tensorflow as tf

from bayesnas_tf.errors import CheckpointMismatchError
from bayesnas_tf.errors import CheckpointUnreadableError
from bayesnas_tf.errors import OutputWriteError
from bayesnas_tf.errors import failure_reason
from bayesnas_tf.io_utils import remove_quietly
from bayesnas_tf.runtime import cluster

# tf.train.CheckpointManager's default checkpoint name: files ckpt-N.index,
# ckpt-N.data-*; a save in progress writes ckpt-N_temp/.
CHECKPOINT_NAME = "ckpt"
STATE_FILE = "checkpoint"
_NUMBERED = re.compile(re.escape(CHECKPOINT_NAME) + r"-(\d+)$")


def variables_by_path(model: keras.layers.Layer) -> Dict[str, tf.Variable]:
  """All variables of `model`, keyed by their unique path inside the model.

  The model's own name is left out of the key, so a checkpoint restores into
  another instance whatever Keras auto-named it.
  """
  prefix = model.name + "/"
  result = {}
  for variable in model.variables:
    key = variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path
    if key in result:
      raise ValueError(
          f"two variables of {model.name} share the path {key!r}; "
          "give the layers unique names")
    result[key] = variable
  return result


# --- writing ------------------------------------------------------------------
def make_manager(checkpoint: tf.train.Checkpoint, directory: str,
                 max_to_keep: int) -> tf.train.CheckpointManager:
  """The CheckpointManager of a run that writes into `directory`.

  First removes what a killed save left there (`ckpt-N_temp/` folders,
  temporary state files), which a later reader could trip over, and moves
  a damaged state file aside (TensorFlow's manager would stop on some
  damage and warn twice about the rest); the checkpoints are found without
  it. Only the run holding the model_dir's lock (run_lock.py) writes here,
  so nothing removed can be another run's save in progress.
  """
  _remove_leftovers(directory)
  state = os.path.join(directory, STATE_FILE)
  if os.path.exists(state) and _read_state(directory) is None:
    aside = state + ".damaged"
    try:
      os.replace(state, aside)
    except OSError as error:
      raise OutputWriteError(aside, failure_reason(error)) from None
    logging.warning("checkpoint state file %s is damaged; moved it to %s and "
                    "looking for the checkpoints themselves", state, aside)
  return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


def save(manager: tf.train.CheckpointManager, number: int) -> str:
  """`manager.save(checkpoint_number=number)`; a failed save raises
  OutputWriteError and leaves the previous checkpoints as they were."""
  prefix = os.path.join(manager.directory, f"{CHECKPOINT_NAME}-{number}")
  existed = bool(glob.glob(glob.escape(prefix) + ".*"))
  try:
    return manager.save(checkpoint_number=number)
  except Exception as error:  # pylint: disable=broad-except
    if not (isinstance(error, OSError) or isinstance(error, tf.errors.OpError)):
      raise
    _remove_leftovers(manager.directory)
    # A new number that did not get all its files is removed; one whose
    # files are complete (the state file failed after them) stays, since
    # the manager may already have deleted the oldest checkpoint for it.
    if not existed and unreadable_reason(prefix) is not None:
      for path in glob.glob(glob.escape(prefix) + ".*"):
        remove_quietly(path)
    raise OutputWriteError(prefix, failure_reason(error)) from None


def _remove_leftovers(directory: str) -> None:
  for path in glob.glob(os.path.join(glob.escape(directory),
                                     f"{CHECKPOINT_NAME}-*_temp")):
    shutil.rmtree(path, ignore_errors=True)
  # The manager writes its state file to checkpoint.tmp<hex>, then renames.
  for path in glob.glob(os.path.join(glob.escape(directory), STATE_FILE + ".tmp*")):
    remove_quietly(path)


# --- reading ------------------------------------------------------------------
def _read_state(directory: str):
  """The parsed checkpoint state file of `directory`, or None when it is
  missing or damaged (TensorFlow's reader raises or warns on damage)."""
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorflow.python.checkpoint import checkpoint_management  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  path = os.path.join(directory, STATE_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    state = checkpoint_management.CheckpointState()
    text_format.Merge(text, state)
  except (OSError, UnicodeDecodeError, text_format.ParseError):
    return None
  return state if state.model_checkpoint_path else None


def candidates(directory: str) -> List[str]:
  """Checkpoint prefixes in `directory`, newest first: the state file's list
  and every ckpt-N.index (a save whose state file update failed, or a
  damaged state file), each named in `directory` (a folder moved elsewhere
  keeps working).

  Newest is the latest written, not the highest number: compress numbers its phase ends 0, 1, 2, ... and the
  saves within a phase by step, and a search saves its update's end under
  the number of the checkpoint before it. Ties (copies that did not keep
  the times) go by the state file's order, then by number. Restoring an
  older consistent checkpoint than the newest only repeats work.
  """
  names = {os.path.basename(p)[:-len(".index")] for p in glob.glob(
      os.path.join(glob.escape(directory), f"{CHECKPOINT_NAME}-*.index"))}
  order = []
  state = _read_state(directory)
  if state is not None:
    order = [os.path.basename(p) for p in (
        list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path])]
    names.update(order)

  def key(name):
    # The .index is written last; without one, a data file tells.
    prefix = os.path.join(directory, name)
    written = -1
    for path in [prefix + ".index"] + sorted(glob.glob(glob.escape(prefix) + ".data-*")):
      with contextlib.suppress(OSError):
        written = os.stat(path).st_mtime_ns
        break
    position = max((i for i, n in enumerate(order) if n == name), default=-1)
    match = _NUMBERED.search(name)
    return written, position, int(match.group(1)) if match else -1, name

  return [os.path.join(directory, name)
          for name in sorted(names, key=key, reverse=True)]


def unreadable_reason(prefix: str) -> Optional[str]:
  """None when every tensor of checkpoint `prefix` reads back intact, else
  why not (a missing or short file, a checksum that does not match)."""
  if not os.path.exists(prefix + ".index"):
    return "its .index file is missing"
  try:
    reader = tf.train.load_checkpoint(prefix)
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)   # TensorFlow checks each tensor's checksum.
  except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as error:
    lines = str(getattr(error, "message", None) or error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]
  return None


def newest_readable(directory: str) -> Optional[str]:
  """The newest checkpoint of `directory` that reads back intact.

  Each newer one that does not is skipped with one warning line (which
  file, why). None when the folder holds no checkpoint; when it holds some
  and none reads back, CheckpointUnreadableError says what to do.
  """
  found = candidates(directory)
  reasons = []
  for prefix in found:
    reason = unreadable_reason(prefix)
    if reason is None:
      # Said once a readable one is found; when none is, the error alone
      # says it all.
      for skipped, why in reasons:
        logging.warning("checkpoint %s cannot be read (%s); resuming from the "
                        "older %s", skipped, why, os.path.basename(prefix))
      return prefix
    reasons.append((prefix, reason))
  if found:
    raise CheckpointUnreadableError(
        f"none of the {len(found)} checkpoints in {directory} can be read ("
        + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in reasons)
        + "); to start over from scratch, move that "
        "folder away (or delete it) and run the same command again")
  return None


def restore_latest(checkpoint: tf.train.Checkpoint,
                   manager: tf.train.CheckpointManager,
                   partial: bool = False) -> Optional[str]:
  """Restores the newest readable checkpoint, if any; a mismatch is a user
  error.

  Returns the restored path (None when there is none). Every object that
  exists now must find its value in the checkpoint. A non-chief worker of a
  cluster restores the chief's checkpoint (cluster.py). `partial=True` is
  for a reader that wants only part of what was written (the export reads a
  training checkpoint's weights, not its optimizer and position): the rest
  is left unread without TensorFlow's "could not be found" warnings.
  """
  return restore_newest(checkpoint, manager.directory, partial)


def restore_newest(checkpoint: tf.train.Checkpoint, directory: str,
                   partial: bool = False) -> Optional[str]:
  """`restore_latest` from the checkpoints in `directory`, without a
  manager (a reader such as the export, which must not write there)."""
  latest = newest_readable(cluster.checkpoint_directory(directory))
  cluster.agree_on_checkpoint(latest)
  if not latest:
    return None
  try:
    status = checkpoint.restore(latest).assert_existing_objects_matched()
    if partial:
      status.expect_partial()
  except (tf.errors.OpError, AssertionError, ValueError) as error:
    raise CheckpointMismatchError(
        f"checkpoint {latest} cannot be restored into this configuration "
        f"({str(error).splitlines()[0][:200]}); pass a new --model_dir") from None
  return latest
