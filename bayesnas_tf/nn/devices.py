"""Which devices TensorFlow sees on this host."""

import tensorflow as tf


def has_accelerator() -> bool:
  """Whether TensorFlow sees a GPU or a TPU on this host."""
  return bool(tf.config.list_physical_devices("GPU") or
              tf.config.list_physical_devices("TPU"))
