"""`SequenceOp`: the base of every op that is a fixed chain of Keras layers.

The DAG cells' primitives (spaces/dag/ops.py) and the tree cells' ops
(spaces/tree/ops.py) derive from it.
"""

from __future__ import annotations

from typing import Tuple

import keras

from bayesnas_tf.nn import fast_conv
from bayesnas_tf.nn.batch_norm import BatchNorm
from bayesnas_tf.nn.init import build_sequence
from bayesnas_tf.nn.init import check_positive
from bayesnas_tf.nn.init import check_stride
from bayesnas_tf.nn.init import strided_shape


class SequenceOp(keras.layers.Layer):
  """An op that is a fixed chain of Keras layers, applied in order; its BNs
  get the `training` flag."""

  def __init__(self, channels: int, stride: int = 1, **kwargs):
    super().__init__(**kwargs)
    check_positive("channels", channels)
    check_stride(stride)
    self.channels = channels
    self.stride = stride
    self._chain: list = []

  @property
  def output_channels(self) -> int:
    return self.channels

  @property
  def chain(self) -> Tuple[keras.layers.Layer, ...]:
    """The layers in the order `call` applies them (read by the shadow pass
    of spaces/dag/diag_backprop.py, which walks an op layer by layer)."""
    return tuple(self._chain)

  def build(self, input_shape):
    if input_shape[-1] is not None and input_shape[-1] != self.channels:
      raise ValueError(
          f"{self.__class__.__name__} expects {self.channels} input channels. "
          f"Received: input_shape={tuple(input_shape)}.")
    build_sequence(self._chain, input_shape)
    self.built = True

  def call(self, inputs, training=None):
    x = inputs
    for layer in self._chain:
      if isinstance(layer, BatchNorm):
        x = layer(x, training=training)
      elif fast_conv.is_strided_1x1(layer):
        # Its kernel, its numbers, around oneDNN's strided 1x1 filter
        # gradient, which crashes on narrow inputs (fast_conv).
        x = fast_conv.strided_conv1x1(x, layer.kernel, layer.strides[0])
      else:
        x = layer(x)
    return x

  def compute_output_shape(self, input_shape):
    return strided_shape(input_shape, self.stride, self.output_channels)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "stride": self.stride})
    return config
