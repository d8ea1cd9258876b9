"""Checkpoint helpers for Keras 3 models under `tf.train.Checkpoint`.

Keras 3 tracks sublayers kept in Python lists with its own `TrackedList`,
which TensorFlow's object-based checkpointing does not follow: layers nested
in lists (our cells, edges, candidate ops) would silently lose their
non-trainable state (BN moving statistics, gate masks) on restore. So models
are checkpointed as a flat {variable path: variable} mapping, which covers
every variable by construction.
"""

from __future__ import annotations

from typing import Dict, Optional

import keras
import tensorflow as tf

from bayesnas_tf.errors import CheckpointMismatchError
from bayesnas_tf.runtime import cluster


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


def restore_latest(checkpoint: tf.train.Checkpoint,
                   manager: tf.train.CheckpointManager,
                   partial: bool = False) -> Optional[str]:
  """Restores the newest checkpoint, if any; a mismatch is a user error.

  Returns the restored path (None when there is none). Every object that
  exists now must find its value in the checkpoint. A non-chief worker of a
  cluster restores the chief's checkpoint (cluster.py). `partial=True` is
  for a reader that wants only part of what was written (the export reads a
  training checkpoint's weights, not its optimizer and position): the rest
  is left unread without TensorFlow's "could not be found" warnings.
  """
  latest = cluster.checkpoint_to_restore(manager)
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
