"""The NAS-Bench-201 ops as Keras layers (NB201.md, "The cell"; the
benchmark's reference code, AutoDL-Projects `cell_operations.py`).

* `nor_conv_kxk` (`ReLUConvBN`): ReLU -> k x k conv, stride 1, padding
  (k-1)/2, no bias -> BN. In the benchmark's networks the BN is affine; the
  search cells may drop its scale and offset (op set "nb201_noaffine", as
  the benchmark's and DARTS's search cells do), so that an op's output scale
  is carried by its gate alone (DESIGN: --nb201_bn_affine).
* `avg_pool_3x3`: 3x3 average, stride 1, padding 1, divided by the number
  of valid (non-padded) positions (PyTorch count_include_pad=False): Keras's
  `AveragePooling2D` with "same" padding.
* `skip_connect`: the identity (`keras.layers.Identity`).

`ReLUConvBN` with stride 2 and explicit symmetric padding is also the
residual block's branch (network.py): PyTorch pads (1, 1) where TF's "SAME"
pads (0, 1) for a stride-2 conv on even sizes (ALGORITHM.md 9.1).

Both op sets are registered with `layers.op_registry`: "nb201" (affine BN)
and "nb201_noaffine".
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bayesnas_tf.layers import op_registry
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import fast_conv
from bayesnas_tf.nn import init
from bayesnas_tf.nn.batch_norm import BatchNorm
from bayesnas_tf.spaces.nb201 import space


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReLUConvBN(keras.layers.Layer):
  """ReLU -> k x k conv (no bias) -> BN, NB201's `nor_conv_kxk`.

  Args:
    channels: output channels.
    kernel_size: 1 or 3.
    stride: 1, or 2 (the residual blocks' first conv).
    affine: whether the BN has a scale and an offset.
  """

  def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1,
               affine: bool = True, **kwargs):
    super().__init__(**kwargs)
    init.check_positive("channels", channels)
    init.check_stride(stride)
    if kernel_size not in (1, 3):
      raise ValueError(
          f"`kernel_size` must be 1 or 3. Received: kernel_size={kernel_size!r}.")
    self.channels = channels
    self.kernel_size = kernel_size
    self.stride = stride
    self.affine = bool(affine)
    self.bn = BatchNorm(momentum=0.9, epsilon=1e-5, affine=self.affine,
                        name="bn", dtype=self.dtype_policy)

  def build(self, input_shape):
    in_channels = input_shape[-1]
    if in_channels is None:
      raise ValueError(f"ReLUConvBN needs a known channel count. Received: "
                       f"input_shape={tuple(input_shape)}.")
    self.kernel = self.add_weight(
        name="kernel",
        shape=(self.kernel_size, self.kernel_size, int(in_channels), self.channels),
        initializer=init.conv_initializer())
    self.bn.build(self.compute_output_shape(input_shape))
    self.built = True

  def call(self, inputs, training=None):
    # Dense convs run in the compute dtype (bfloat16 ones are the fast path
    # on a CPU with AVX512-BF16); the BN upcasts where it must (batch_norm.py).
    x = tf.nn.relu(inputs)
    kernel = tf.cast(self.kernel, x.dtype)
    if self.kernel_size == 1 and self.stride == 1:
      y = fast_conv.pointwise(x, kernel)
    elif self.stride == 1:
      y = tf.nn.conv2d(x, kernel, 1, "SAME")
    else:
      # PyTorch's symmetric padding: TF's "SAME" pads (0, 1) at stride 2.
      pad = (self.kernel_size - 1) // 2
      y = tf.nn.conv2d(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]),
                       kernel, self.stride, "VALID")
    return self.bn(y, training=training)

  def compute_output_shape(self, input_shape):
    batch, height, width, _ = input_shape
    return (batch, init.strided_size(height, self.stride),
            init.strided_size(width, self.stride), self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "kernel_size": self.kernel_size,
                   "stride": self.stride, "affine": self.affine})
    return config


def make_op(op_name: str, *, channels: int, stride: int, name: str,
            dtype=None, affine: bool = True) -> keras.layers.Layer:
  """One of `space.OPS` (cells have stride 1 everywhere)."""
  if stride != 1:
    raise ValueError(f"NB201 cell ops have stride 1. Received: stride={stride!r}.")
  if op_name == "skip_connect":
    return keras.layers.Identity(name=name, dtype=dtype)
  if op_name == "nor_conv_1x1":
    return ReLUConvBN(channels, 1, 1, affine, name=name, dtype=dtype)
  if op_name == "nor_conv_3x3":
    return ReLUConvBN(channels, 3, 1, affine, name=name, dtype=dtype)
  if op_name == "avg_pool_3x3":
    # TF's "SAME" average pool divides by the valid positions only.
    return keras.layers.AveragePooling2D(3, strides=1, padding="same",
                                         name=name, dtype=dtype)
  raise ValueError(f"unknown NB201 op {op_name!r}; valid ops are {space.OPS}")


def op_set_name(bn_affine: bool) -> str:
  return "nb201" if bn_affine else "nb201_noaffine"


op_registry.register_op_set(
    "nb201", space.OPS,
    lambda op_name, channels, stride, name, dtype=None: make_op(
        op_name, channels=channels, stride=stride, name=name, dtype=dtype,
        affine=True))
op_registry.register_op_set(
    "nb201_noaffine", space.OPS,
    lambda op_name, channels, stride, name, dtype=None: make_op(
        op_name, channels=channels, stride=stride, name=name, dtype=dtype,
        affine=False))
