"""Checkpoint helpers for Keras 3 models under `tf.train.Checkpoint`.

Keras 3 tracks sublayers kept in Python lists with its own `TrackedList`,
which TensorFlow's object-based checkpointing does not follow: layers nested
in lists (our cells, edges, candidate ops) would silently lose their
non-trainable state (BN moving statistics, gate masks) on restore. So models
are checkpointed as a flat {variable path: variable} mapping, which covers
every variable by construction.
"""

from __future__ import annotations

from typing import Dict

import keras
import tensorflow as tf


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
