"""Initializers and small helpers that every network's layers share.

The initializers follow PyTorch's defaults (ALGORITHM.md 9.1), because the
parameter counts and the early training dynamics are compared with the
official code; `batch_norm` and `conv1x1` build the two layers that every
op, cell and stem uses; `build_sequence`, `strided_size` and the argument
checks serve composite layers.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.nn.batch_norm import BatchNorm

# PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5)) is
# U(+-sqrt(1/fan_in)), i.e. VarianceScaling(1/3, fan_in, uniform)
# (ALGORITHM.md 9.1). Keras's glorot default would change the early dynamics.
def conv_initializer() -> keras.initializers.Initializer:
  return keras.initializers.VarianceScaling(
      scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def depthwise_initializer() -> keras.initializers.Initializer:
  # A Keras depthwise kernel has shape (k, k, C, 1), so Keras's "fan_in" would
  # be k*k*C; PyTorch's grouped conv uses k*k, which is Keras's "fan_out" here.
  return keras.initializers.VarianceScaling(
      scale=1.0 / 3.0, mode="fan_out", distribution="uniform")


def batch_norm(name: str, dtype=None) -> BatchNorm:
  """BN with PyTorch's defaults (momentum 0.1 -> Keras 0.9, eps 1e-5).

  Training-mode statistics are those of the global batch under a
  multi-replica `tf.distribute` strategy (see `batch_norm.BatchNorm`).
  `dtype` (here and below) is the Keras dtype policy: composite layers pass
  their own, since Keras 3 does not hand a layer's policy to the sublayers
  it creates.
  """
  return BatchNorm(momentum=0.9, epsilon=1e-5, name=name, dtype=dtype)


def conv1x1(filters: int, stride: int, name: str,
            dtype=None) -> keras.layers.Conv2D:
  return keras.layers.Conv2D(
      filters, 1, strides=stride, padding="valid", use_bias=False,
      kernel_initializer=conv_initializer(), name=name, dtype=dtype)


def build_sequence(layers: Sequence[keras.layers.Layer], input_shape):
  """Builds `layers` in order, feeding each the previous output shape."""
  shape = tuple(input_shape)
  for layer in layers:
    if not layer.built:
      layer.build(shape)
    shape = tuple(layer.compute_output_shape(shape))
  return shape


def check_positive(name: str, value: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(
        f"`{name}` must be a positive integer. Received: {name}={value!r}.")


def check_stride(stride: int) -> None:
  if stride not in (1, 2):
    raise ValueError(f"`stride` must be 1 or 2. Received: stride={stride!r}.")


def strided_size(size, stride: int):
  """Spatial size after a padded 3x3/1x1 op of the given stride."""
  if size is None:
    return None
  return (size - 1) // stride + 1


def strided_shape(input_shape, stride: int, channels: int) -> tuple:
  """The NHWC shape after a padded 3x3/1x1 op of `stride` with `channels`
  outputs."""
  batch, height, width, _ = input_shape
  return (batch, strided_size(height, stride), strided_size(width, stride),
          channels)


def dense_bias_initializer(fan_in: int) -> keras.initializers.Initializer:
  # PyTorch's Linear bias init, U(+-1/sqrt(fan_in)) (ALGORITHM.md 9.1).
  bound = 1.0 / float(np.sqrt(fan_in))
  return keras.initializers.RandomUniform(-bound, bound)


def count_params(variables) -> int:
  """The number of scalars in `variables`."""
  return int(sum(int(np.prod(v.shape)) for v in variables))


def scale_by(x: tf.Tensor, coefficient: tf.Tensor) -> tf.Tensor:
  """x * coefficient for a scalar or a per-example (B,) coefficient."""
  coefficient = tf.cast(coefficient, x.dtype)
  if coefficient.shape.rank == 0:
    return x * coefficient
  return x * tf.reshape(coefficient, [-1] + [1] * (x.shape.rank - 1))
