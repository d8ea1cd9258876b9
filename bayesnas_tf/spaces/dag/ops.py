"""The candidate operations of a BayesNAS edge (ALGORITHM.md 1.1), as Keras layers.

Every op follows the official PyTorch code exactly, because the parameter counts
and the Hessian both depend on it:

* explicit zero padding followed by a "VALID" conv or pool (TF's "SAME" pads
  (0, 1) for stride 2 and pads max pools with -inf; the official code pads
  (1, 1) with zeros, and its average pool always divides by 9);
* pre-activation order BN -> ReLU -> conv, no BN at the end of an op;
* "dil" ops are dense (not depthwise) dilated convs followed by a 1x1 conv;
* `id` is the identity at stride 1 and BN -> 1x1 conv stride 2 at stride 2.

`OPS` builds the primitives named in `op_names.PRIMITIVES` (TensorFlow-free,
for checking flags before TensorFlow loads), in the same order.
"""

from __future__ import annotations

from typing import Callable, Dict

import keras
import tensorflow as tf

from bayesnas_tf.layers.op_registry import register_op_set
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import fast_conv
from bayesnas_tf.nn.batch_norm import bfloat16_on_cpu
from bayesnas_tf.nn.init import batch_norm
from bayesnas_tf.nn.init import build_sequence
from bayesnas_tf.nn.init import check_positive
from bayesnas_tf.nn.init import check_stride
from bayesnas_tf.nn.init import conv1x1
from bayesnas_tf.nn.init import conv_initializer
from bayesnas_tf.nn.init import depthwise_initializer
from bayesnas_tf.nn.init import strided_shape
from bayesnas_tf.nn.sequence_op import SequenceOp
from bayesnas_tf.spaces.base import check_registry
# Re-exported: callers read them as ops.PRIMITIVES etc.
from bayesnas_tf.spaces.dag.op_names import PRIMITIVES, check_primitives  # pylint: disable=unused-import


def _symmetric_pad(pad_layer: keras.layers.ZeroPadding2D):
  """The pad of a ZeroPadding2D that pads every side equally, else None."""
  (top, bottom), (left, right) = pad_layer.padding
  return top if top == bottom == left == right else None


def padded_depthwise(pad_layer: keras.layers.ZeroPadding2D,
                     depthwise: keras.layers.DepthwiseConv2D, x):
  """depthwise(pad_layer(x)) without materialising the padded copy.

  At stride 1 a symmetric zero pad of d(k-1)/2 followed by a VALID conv is
  exactly TF's "SAME" conv (which pads (k-1)/2 zeros on both sides for odd
  effective kernels), and the fused kernel skips the pad's copy forward and
  its slice backward (and on a CPU a 5x5 kernel's filter gradient takes
  `fast_conv.depthwise_same`'s faster route). Other cases (stride 2, where
  "SAME" pads (0, 1)) run the pad and a VALID conv.

  A bfloat16 `x` on a CPU is convolved in float32 (`bfloat16_on_cpu`): the
  result is cast back, so the op still computes in its dtype policy.
  """
  kernel = depthwise.kernel_size[0]
  rate = depthwise.dilation_rate[0]
  plain = (depthwise.padding == "valid" and not depthwise.use_bias
           and depthwise.data_format == "channels_last"
           and getattr(depthwise.activation, "__name__", "") == "linear")
  if not plain:
    return depthwise(pad_layer(x))
  upcast = bfloat16_on_cpu(x)
  y = tf.cast(x, tf.float32) if upcast else x
  # Read inside the op's call, the kernel is already in the compute dtype.
  weights = tf.cast(depthwise.kernel, y.dtype)
  if (tuple(depthwise.strides) == (1, 1)
      and depthwise.kernel_size[1] == kernel and kernel % 2 == 1
      and tuple(depthwise.dilation_rate) == (rate, rate)
      and _symmetric_pad(pad_layer) == rate * (kernel - 1) // 2):
    y = fast_conv.depthwise_same(y, weights, rate)
  else:
    (top, bottom), (left, right) = pad_layer.padding
    y = tf.nn.depthwise_conv2d(
        tf.pad(y, [[0, 0], [top, bottom], [left, right], [0, 0]]), weights,
        [1, *depthwise.strides, 1], "VALID", dilations=depthwise.dilation_rate)
  return tf.cast(y, x.dtype) if upcast else y


@keras.saving.register_keras_serializable(package=PACKAGE)
class SepConv(SequenceOp):
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
    policy = self.dtype_policy
    for block, block_stride in ((1, stride), (2, 1)):
      self._chain += [
          batch_norm(f"bn{block}", policy),
          keras.layers.ReLU(name=f"relu{block}", dtype=policy),
          keras.layers.ZeroPadding2D(pad, name=f"pad{block}", dtype=policy),
          keras.layers.DepthwiseConv2D(
              kernel_size, strides=block_stride, padding="valid",
              use_bias=False, depthwise_initializer=depthwise_initializer(),
              name=f"depthwise{block}", dtype=policy),
          conv1x1(channels, 1, f"pointwise{block}", policy),
      ]

  def call(self, inputs, training=None):
    # The chain of `SequenceOp.call`, with each pad fused into the
    # depthwise conv after it (`padded_depthwise`) and the 1x1 convs as
    # matmuls (`fast_conv.pointwise`): same numbers.
    x = inputs
    for bn, relu, pad, depthwise, pointwise in (self._chain[:5],
                                                 self._chain[5:]):
      x = relu(bn(x, training=training))
      x = fast_conv.pointwise(padded_depthwise(pad, depthwise, x),
                              pointwise.kernel)
    return x

  def get_config(self):
    config = super().get_config()
    config["kernel_size"] = self.kernel_size
    return config


def _fold_pointwise(shape, kernel_size: int, channels: int) -> bool:
  """Whether composing a kxk and a 1x1 kernel (k^2 C^3 multiply-adds, three
  times with the gradients) costs less than the 1x1 conv it replaces
  (N H W C^2, three times): k^2 C < N H W for the conv's output `shape`.
  Unknown sizes keep the two convs."""
  batch, height, width = shape[0], shape[1], shape[2]
  if batch is None or height is None or width is None:
    return False
  return kernel_size * kernel_size * channels < batch * height * width


@keras.saving.register_keras_serializable(package=PACKAGE)
class DilConv(keras.layers.Layer):
  """Dense dilated conv k x k (dilation 2) then 1x1 (params (k^2+1)C^2 + 2C).

  BN -> ReLU -> pad d(k-1)/2 -> full kxk conv, dilation 2, stride s -> 1x1.
  TF cannot combine a stride > 1 with a dilation > 1, so a stride-2 op runs
  the stride-1 conv and keeps every second row and column, which is exactly
  the PyTorch stride-2 output (output_s2[i] = output_s1[2i]).

  `call` computes the same numbers with fewer operations: at stride 1 the
  symmetric pad + VALID conv is TF's "SAME" conv (no padded copy); at a
  stride equal to the dilation s, output_s[i] = sum_j w_j x_pad[s(i + j)],
  i.e. an undilated "SAME" conv of the subsampled input x[::s, ::s] (the pad
  d(k-1)/2 is a multiple of s), which skips the s^2 - 1 of every s^2
  outputs that the stride-1 conv computes only to drop them. Where the
  batch is large enough (`_fold_pointwise`), the 1x1 conv is folded into
  the kxk kernel. The variables, and so the parameter count, checkpoints
  and the op's function, are unchanged.
  """

  def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1,
               dilation: int = 2, **kwargs):
    super().__init__(**kwargs)
    check_positive("channels", channels)
    check_stride(stride)
    check_positive("dilation", dilation)
    if kernel_size not in (3, 5):
      raise ValueError(
          f"`kernel_size` must be 3 or 5. Received: kernel_size={kernel_size!r}.")
    self.channels = channels
    self.kernel_size = kernel_size
    self.stride = stride
    self.dilation = dilation
    policy = self.dtype_policy
    self.bn = batch_norm("bn", policy)
    self.relu = keras.layers.ReLU(name="relu", dtype=policy)
    self.pad = keras.layers.ZeroPadding2D(
        dilation * (kernel_size - 1) // 2, name="pad", dtype=policy)
    self.conv = keras.layers.Conv2D(
        channels, kernel_size, dilation_rate=dilation, padding="valid",
        use_bias=False, kernel_initializer=conv_initializer(), name="dilated",
        dtype=policy)
    self.pointwise = conv1x1(channels, 1, "pointwise", policy)

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
    if not self._same_is_exact() or self.stride not in (1, self.dilation):
      x = self.conv(self.pad(x))
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      return self.pointwise(x)
    rate = self.dilation
    if self.stride > 1:
      x, rate = x[:, ::self.stride, ::self.stride, :], 1
    if _fold_pointwise(x.shape, self.kernel_size, self.channels):
      # The 1x1 conv after the kxk conv is linear, so both are one kxk conv
      # with the composed kernel W[.., i, o] = sum_m W_k[.., i, m] W_1[m, o];
      # autodiff gives each kernel its own gradient through the product.
      kernel = tf.einsum("hwim,mo->hwio", self.conv.kernel,
                         self.pointwise.kernel[0, 0])
      return fast_conv.same_conv(x, kernel, rate)
    return fast_conv.pointwise(fast_conv.same_conv(x, self.conv.kernel, rate),
                               self.pointwise.kernel)

  def _same_is_exact(self) -> bool:
    return (self.kernel_size % 2 == 1 and not self.conv.use_bias
            and _symmetric_pad(self.pad) == self.dilation * (self.kernel_size - 1) // 2)

  def compute_output_shape(self, input_shape):
    return strided_shape(input_shape, self.stride, self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "kernel_size": self.kernel_size,
                   "stride": self.stride, "dilation": self.dilation})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pool3x3(SequenceOp):
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
        keras.layers.ZeroPadding2D(1, name="pad", dtype=self.dtype_policy),
        pool_cls(3, strides=stride, padding="valid", name=f"{pool_type}_pool",
                 dtype=self.dtype_policy),
    ]

  def get_config(self):
    config = super().get_config()
    config["pool_type"] = self.pool_type
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Identity(SequenceOp):
  """The stride-1 `id` op: y = x (no parameters)."""

  def __init__(self, channels: int, stride: int = 1, **kwargs):
    if stride != 1:
      raise ValueError(
          f"Identity needs stride 1; use ReduceConv. Received: stride={stride!r}.")
    super().__init__(channels, stride, **kwargs)

  def call(self, inputs, training=None):
    return inputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReduceConv(SequenceOp):
  """The stride-2 `id` op of reduction cells: BN -> 1x1 conv stride 2 (C^2+2C)."""

  def __init__(self, channels: int, stride: int = 2, **kwargs):
    if stride != 2:
      raise ValueError(
          f"ReduceConv needs stride 2; use Identity. Received: stride={stride!r}.")
    super().__init__(channels, stride, **kwargs)
    self._chain += [batch_norm("bn", self.dtype_policy),
                    conv1x1(channels, 2, "conv", self.dtype_policy)]


OpFactory = Callable[..., keras.layers.Layer]

# The primitive registry (ALGORITHM.md 1.1). Names follow the genotype notation
# of ALGORITHM.md 6. Factories are keyword-only: channels, stride, name.
OPS: Dict[str, OpFactory] = {
    "sep3": lambda *, channels, stride, name, **kw: SepConv(
        channels, 3, stride, name=name, **kw),
    "sep5": lambda *, channels, stride, name, **kw: SepConv(
        channels, 5, stride, name=name, **kw),
    "dil3": lambda *, channels, stride, name, **kw: DilConv(
        channels, 3, stride, name=name, **kw),
    "dil5": lambda *, channels, stride, name, **kw: DilConv(
        channels, 5, stride, name=name, **kw),
    "max": lambda *, channels, stride, name, **kw: Pool3x3(
        channels, "max", stride, name=name, **kw),
    "avg": lambda *, channels, stride, name, **kw: Pool3x3(
        channels, "avg", stride, name=name, **kw),
    "id": lambda *, channels, stride, name, **kw: (
        Identity(channels, 1, name=name, **kw) if stride == 1
        else ReduceConv(channels, stride, name=name, **kw)),
}

check_registry(OPS, PRIMITIVES, "ops.OPS")


def make_op(op_name: str, channels: int, stride: int,
            name: str | None = None, dtype=None) -> keras.layers.Layer:
  """Builds the registered op `op_name`; raises ConfigError for unknown names.

  `dtype`: the Keras dtype policy of the op and its sublayers.
  """
  check_primitives([op_name])
  return OPS[op_name](channels=channels, stride=stride, name=name or op_name,
                      dtype=dtype)


# MixedOp / SwitchedEdge build their candidates from the op set "darts".
register_op_set("darts", PRIMITIVES, make_op, check=check_primitives)
