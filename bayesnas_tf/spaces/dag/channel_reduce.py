"""`ChannelReduce`: the official CReduct cell-input preprocessor (ALGORITHM.md 1.3).

[size reduction] -> BN(Cin) -> ReLU -> 1x1 conv Cin -> Cout.

The size reduction halves the spatial size of the k-2 input of a cell that
follows a reduction cell. Two variants with equal parameter counts exist in
the released networks (ALGORITHM.md 5.1): `conv`, one 1x1 stride-2 conv
Cin -> Cin; and `factorized`, two 1x1 stride-2 convs Cin -> Cin/2, the second
on the input shifted by one pixel, concatenated.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import fast_conv
from bayesnas_tf.nn import init

SIZE_REDUCTIONS = ("none", "conv", "factorized")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelReduce(keras.layers.Layer):
  """Args:
    channels: output channels.
    size_reduct: "none", "conv" or "factorized".
  """

  def __init__(self, channels: int, size_reduct: str = "none", **kwargs):
    super().__init__(**kwargs)
    if not isinstance(channels, int) or channels <= 0:
      raise ValueError(
          f"`channels` must be a positive integer. Received: channels={channels!r}.")
    if size_reduct not in SIZE_REDUCTIONS:
      raise ValueError(
          f"`size_reduct` must be one of {SIZE_REDUCTIONS}. "
          f"Received: size_reduct={size_reduct!r}.")
    self.channels = channels
    self.size_reduct = size_reduct
    self.bn = init.batch_norm("bn", self.dtype_policy)
    self.relu = keras.layers.ReLU(name="relu", dtype=self.dtype_policy)
    self.conv = init.conv1x1(channels, 1, "conv", self.dtype_policy)
    self.reduce_convs = []

  def build(self, input_shape):
    in_channels = input_shape[-1]
    if self.size_reduct == "conv":
      self.reduce_convs = [init.conv1x1(in_channels, 2, "size_reduct",
                                       self.dtype_policy)]
    elif self.size_reduct == "factorized":
      if in_channels % 2:
        raise ValueError(
            "factorized size reduction needs an even number of input "
            f"channels. Received: input_shape={tuple(input_shape)}.")
      self.reduce_convs = [init.conv1x1(in_channels // 2, 2, f"size_reduct{i}",
                                       self.dtype_policy)
                           for i in (1, 2)]
    for conv in self.reduce_convs:
      conv.build(input_shape)
    reduced = self._reduced_shape(input_shape)
    init.build_sequence([self.bn, self.relu, self.conv], reduced)
    self.built = True

  def _reduced_shape(self, input_shape):
    if self.size_reduct == "none":
      return tuple(input_shape)
    batch, height, width, channels = input_shape
    return (batch, init.strided_size(height, 2), init.strided_size(width, 2),
            channels)

  def call(self, inputs, training=None):
    x = inputs
    # The stride-2 1x1 convs by fast_conv.strided_conv1x1 (their kernels,
    # their numbers): oneDNN's filter gradient of a strided 1x1 conv crashes
    # the process on narrow inputs (the ImageNet network at --channels=8).
    def reduce(conv, images):
      return fast_conv.strided_conv1x1(images, conv.kernel, 2)

    if self.size_reduct == "conv":
      x = reduce(self.reduce_convs[0], x)
    elif self.size_reduct == "factorized":
      # Shift by one pixel; the zero row/column at the far edge is never
      # sampled for even sizes and keeps both halves the same size for odd.
      shifted = tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
      x = tf.concat([reduce(self.reduce_convs[0], x),
                     reduce(self.reduce_convs[1], shifted)], axis=-1)
    return fast_conv.pointwise(self.relu(self.bn(x, training=training)),
                               self.conv.kernel)

  def compute_output_shape(self, input_shape):
    return self._reduced_shape(input_shape)[:-1] + (self.channels,)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "size_reduct": self.size_reduct})
    return config
