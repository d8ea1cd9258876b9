"""The candidate operations of a BayesNAS edge (ALGORITHM.md 1.1), as Keras layers.

Every op follows the official PyTorch code exactly, because the parameter counts
and the Hessian both depend on it:

* explicit zero padding followed by a "VALID" conv or pool (TF's "SAME" pads
  (0, 1) for stride 2 and pads max pools with -inf; the official code pads
  (1, 1) with zeros, and its average pool always divides by 9);
* pre-activation order BN -> ReLU -> conv, no BN at the end of an op;
* "dil" ops are dense (not depthwise) dilated convs followed by a 1x1 conv;
* `id` is the identity at stride 1 and BN -> 1x1 conv stride 2 at stride 2.

`OPS` is the single source of truth: `PRIMITIVES` is derived from it.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

import keras
import tensorflow as tf

from bayesnas_tf.batch_norm import BatchNorm
from bayesnas_tf.errors import ConfigError

PACKAGE = "bayesnas_tf"

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


def batch_norm(name: str) -> BatchNorm:
  """BN with PyTorch's defaults (momentum 0.1 -> Keras 0.9, eps 1e-5).

  Training-mode statistics are those of the global batch under a
  multi-replica `tf.distribute` strategy (see `batch_norm.BatchNorm`).
  """
  return BatchNorm(momentum=0.9, epsilon=1e-5, name=name)


def conv1x1(filters: int, stride: int, name: str) -> keras.layers.Conv2D:
  return keras.layers.Conv2D(
      filters, 1, strides=stride, padding="valid", use_bias=False,
      kernel_initializer=conv_initializer(), name=name)


def build_sequence(layers: Sequence[keras.layers.Layer], input_shape):
  """Builds `layers` in order, feeding each the previous output shape."""
  shape = tuple(input_shape)
  for layer in layers:
    if not layer.built:
      layer.build(shape)
    shape = tuple(layer.compute_output_shape(shape))
  return shape


def _check_positive(name: str, value: int) -> None:
  if not isinstance(value, int) or value <= 0:
    raise ValueError(
        f"`{name}` must be a positive integer. Received: {name}={value!r}.")


def _check_stride(stride: int) -> None:
  if stride not in (1, 2):
    raise ValueError(f"`stride` must be 1 or 2. Received: stride={stride!r}.")


def strided_size(size, stride: int):
  """Spatial size after a padded 3x3/1x1 op of the given stride."""
  if size is None:
    return None
  return (size - 1) // stride + 1


class _SequenceOp(keras.layers.Layer):
  """An op that is a fixed chain of Keras layers, applied in order."""

  def __init__(self, channels: int, stride: int = 1, **kwargs):
    super().__init__(**kwargs)
    _check_positive("channels", channels)
    _check_stride(stride)
    self.channels = channels
    self.stride = stride
    self._chain: list = []

  @property
  def chain(self) -> Tuple[keras.layers.Layer, ...]:
    """The layers in the order `call` applies them (read by the shadow pass
    of search/diag_backprop.py, which walks an op layer by layer)."""
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
      else:
        x = layer(x)
    return x

  def compute_output_shape(self, input_shape):
    batch, height, width, _ = input_shape
    return (batch, strided_size(height, self.stride),
            strided_size(width, self.stride), self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "stride": self.stride})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SepConv(_SequenceOp):
  """Separable conv k x k, applied twice (ALGORITHM.md 1.1, params 2C^2+(4+2k^2)C).

  BN -> ReLU -> pad -> depthwise kxk stride s -> 1x1, then
  BN -> ReLU -> pad -> depthwise kxk stride 1 -> 1x1.
  """

  def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1,
               **kwargs):
    super().__init__(channels, stride, **kwargs)
    if kernel_size not in (3, 5):
      raise ValueError(
          f"`kernel_size` must be 3 or 5. Received: kernel_size={kernel_size!r}.")
    self.kernel_size = kernel_size
    pad = kernel_size // 2
    for block, block_stride in ((1, stride), (2, 1)):
      self._chain += [
          batch_norm(f"bn{block}"),
          keras.layers.ReLU(name=f"relu{block}"),
          keras.layers.ZeroPadding2D(pad, name=f"pad{block}"),
          keras.layers.DepthwiseConv2D(
              kernel_size, strides=block_stride, padding="valid",
              use_bias=False, depthwise_initializer=depthwise_initializer(),
              name=f"depthwise{block}"),
          conv1x1(channels, 1, f"pointwise{block}"),
      ]

  def get_config(self):
    config = super().get_config()
    config["kernel_size"] = self.kernel_size
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DilConv(keras.layers.Layer):
  """Dense dilated conv k x k (dilation 2) then 1x1 (params (k^2+1)C^2 + 2C).

  BN -> ReLU -> pad d(k-1)/2 -> full kxk conv, dilation 2, stride s -> 1x1.
  TF cannot combine a stride > 1 with a dilation > 1, so a stride-2 op runs
  the stride-1 conv and keeps every second row and column, which is exactly
  the PyTorch stride-2 output (output_s2[i] = output_s1[2i]).
  """

  def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1,
               dilation: int = 2, **kwargs):
    super().__init__(**kwargs)
    _check_positive("channels", channels)
    _check_stride(stride)
    _check_positive("dilation", dilation)
    if kernel_size not in (3, 5):
      raise ValueError(
          f"`kernel_size` must be 3 or 5. Received: kernel_size={kernel_size!r}.")
    self.channels = channels
    self.kernel_size = kernel_size
    self.stride = stride
    self.dilation = dilation
    self.bn = batch_norm("bn")
    self.relu = keras.layers.ReLU(name="relu")
    self.pad = keras.layers.ZeroPadding2D(
        dilation * (kernel_size - 1) // 2, name="pad")
    self.conv = keras.layers.Conv2D(
        channels, kernel_size, dilation_rate=dilation, padding="valid",
        use_bias=False, kernel_initializer=conv_initializer(), name="dilated")
    self.pointwise = conv1x1(channels, 1, "pointwise")

  def build(self, input_shape):
    if input_shape[-1] is not None and input_shape[-1] != self.channels:
      raise ValueError(
          f"DilConv expects {self.channels} input channels. "
          f"Received: input_shape={tuple(input_shape)}.")
    build_sequence([self.bn, self.relu, self.pad, self.conv], input_shape)
    self.pointwise.build(self.compute_output_shape(input_shape))
    self.built = True

  def call(self, inputs, training=None):
    x = self.relu(self.bn(inputs, training=training))
    x = self.conv(self.pad(x))
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    return self.pointwise(x)

  def compute_output_shape(self, input_shape):
    batch, height, width, _ = input_shape
    return (batch, strided_size(height, self.stride),
            strided_size(width, self.stride), self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "kernel_size": self.kernel_size,
                   "stride": self.stride, "dilation": self.dilation})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pool3x3(_SequenceOp):
  """3x3 max or average pool after an explicit zero pad of 1.

  Max: the padding is zeros, not -inf (matters for negative cell inputs).
  Average: the padding is counted, so every window divides by 9.
  """

  def __init__(self, channels: int, pool_type: str = "max", stride: int = 1,
               **kwargs):
    super().__init__(channels, stride, **kwargs)
    if pool_type not in ("max", "avg"):
      raise ValueError(
          f"`pool_type` must be 'max' or 'avg'. Received: pool_type={pool_type!r}.")
    self.pool_type = pool_type
    pool_cls = (keras.layers.MaxPooling2D if pool_type == "max"
                else keras.layers.AveragePooling2D)
    self._chain += [
        keras.layers.ZeroPadding2D(1, name="pad"),
        pool_cls(3, strides=stride, padding="valid", name=f"{pool_type}_pool"),
    ]

  def get_config(self):
    config = super().get_config()
    config["pool_type"] = self.pool_type
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Identity(_SequenceOp):
  """The stride-1 `id` op: y = x (no parameters)."""

  def __init__(self, channels: int, stride: int = 1, **kwargs):
    if stride != 1:
      raise ValueError(
          f"Identity needs stride 1; use ReduceConv. Received: stride={stride!r}.")
    super().__init__(channels, stride, **kwargs)

  def call(self, inputs, training=None):
    return inputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReduceConv(_SequenceOp):
  """The stride-2 `id` op of reduction cells: BN -> 1x1 conv stride 2 (C^2+2C)."""

  def __init__(self, channels: int, stride: int = 2, **kwargs):
    if stride != 2:
      raise ValueError(
          f"ReduceConv needs stride 2; use Identity. Received: stride={stride!r}.")
    super().__init__(channels, stride, **kwargs)
    self._chain += [batch_norm("bn"), conv1x1(channels, 2, "conv")]


OpFactory = Callable[..., keras.layers.Layer]

# The primitive registry (ALGORITHM.md 1.1). Names follow the genotype notation
# of ALGORITHM.md 6. Factories are keyword-only: channels, stride, name.
OPS: Dict[str, OpFactory] = {
    "sep3": lambda *, channels, stride, name: SepConv(
        channels, 3, stride, name=name),
    "sep5": lambda *, channels, stride, name: SepConv(
        channels, 5, stride, name=name),
    "dil3": lambda *, channels, stride, name: DilConv(
        channels, 3, stride, name=name),
    "dil5": lambda *, channels, stride, name: DilConv(
        channels, 5, stride, name=name),
    "max": lambda *, channels, stride, name: Pool3x3(
        channels, "max", stride, name=name),
    "avg": lambda *, channels, stride, name: Pool3x3(
        channels, "avg", stride, name=name),
    "id": lambda *, channels, stride, name: (
        Identity(channels, 1, name=name) if stride == 1
        else ReduceConv(channels, stride, name=name)),
}

PRIMITIVES: Tuple[str, ...] = tuple(OPS)

# The paper's prune threshold: an op is pruned when the entropy of its prior,
# 1/2 ln(2 pi e gamma), is not positive (Sec. 5.3), i.e. gamma <= 1/(2 pi e).
PRUNE_THRESHOLD = 1.0 / (2.0 * math.pi * math.e)


def check_primitives(names: Sequence[str]) -> Tuple[str, ...]:
  """Validates a list of primitive names against the registry."""
  names = tuple(names)
  unknown = [n for n in names if n not in OPS]
  if unknown:
    raise ConfigError(
        f"unknown primitive(s) {', '.join(unknown)}; "
        f"valid primitives are {', '.join(PRIMITIVES)}")
  if not names:
    raise ConfigError(
        f"at least one primitive is needed; valid primitives are "
        f"{', '.join(PRIMITIVES)}")
  if len(set(names)) != len(names):
    raise ConfigError(f"primitives are listed twice: {', '.join(names)}")
  return names


def make_op(op_name: str, channels: int, stride: int,
            name: str | None = None) -> keras.layers.Layer:
  """Builds the registered op `op_name`; raises ConfigError for unknown names."""
  check_primitives([op_name])
  return OPS[op_name](channels=channels, stride=stride, name=name or op_name)


def scale_by(x: tf.Tensor, coefficient: tf.Tensor) -> tf.Tensor:
  """x * coefficient for a scalar or a per-example (B,) coefficient."""
  coefficient = tf.cast(coefficient, x.dtype)
  if coefficient.shape.rank == 0:
    return x * coefficient
  return x * tf.reshape(coefficient, [-1] + [1] * (x.shape.rank - 1))
