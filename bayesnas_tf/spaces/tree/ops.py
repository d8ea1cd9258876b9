"""Edge operations of tree cells (PROXYLESS.md 1.4), as Keras layers.

PathLevel-EAS and ProxylessNAS build every edge "bn_act_weight", i.e.
pre-activation, and their ops differ from the DARTS-style registry of the
DAG cells (spaces/dag/ops.py, which follows the official BayesNAS code), so
tree cells have their own registry with distinct names:

* `sepK` (K = 3, 5, 7) and `dil_sep3`: BN -> ReLU -> zero pad d*(K//2) ->
  depthwise KxK (dilation d) -> pointwise 1x1, with ONE BN (PL layers.py
  DepthConvLayer; not DARTS's doubled sep conv): C^2 + K^2 C + 2C params.
* `conv1x1`: BN -> ReLU -> 1x1 conv: C^2 + 2C.
* `gconv3`: BN -> ReLU -> zero pad 1 -> 3x3 group conv, G = 2, stride s (the
  PyramidNet block's own conv, PL pyramidnet.py): 4.5 C^2 + 2C.
* `avg3` / `max3`: 3x3 stride-1 pooling, no BN. PyTorch pads these with
  count_include_pad=False (avg) and -inf (max), which is exactly Keras's
  'same' pooling at stride 1 (pad 1 on each side).
* `identity`: no params.

The cell-level pre-edge of the ProxylessNAS tree, `gconv3_x2`, is the same
group conv widened C -> 2C and followed by a channel shuffle (PX layers.py
`has_shuffle`): 9 C^2 + 2C.

All convs are bias-free with PyTorch's default init (`init.conv_initializer`),
all BNs use `init.batch_norm` (eps 1e-5, momentum 0.9); strided and dilated
convs use explicit zero padding + 'valid' (ALGORITHM.md 9.1).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import keras
import tensorflow as tf

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.nn.sequence_op import SequenceOp
from bayesnas_tf.spaces.base import check_registry
from bayesnas_tf.spaces.tree import op_names

GROUPS = 2  # The group count of every 3x3 group conv (PROXYLESS.md 2).


class _TreeSequenceOp(SequenceOp):
  """A tree-cell op that is a fixed chain of layers (SequenceOp)."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class TreeSepConv(_TreeSequenceOp):
  """Depthwise-separable KxK conv with one BN (PL DepthConvLayer).

  BN -> ReLU -> pad d*(K//2) -> depthwise KxK dilation d -> 1x1 C -> C.

  Args:
    channels: input = output channels.
    kernel_size: 3, 5 or 7.
    dilation: 1, or 2 for `dil_sep3`.
  """

  def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1,
               **kwargs):
    super().__init__(channels, 1, **kwargs)
    if kernel_size not in (3, 5, 7):
      raise ValueError(
          f"`kernel_size` must be 3, 5 or 7. Received: kernel_size={kernel_size!r}.")
    init.check_positive("dilation", dilation)
    self.kernel_size = kernel_size
    self.dilation = dilation
    policy = self.dtype_policy
    self._chain += [
        init.batch_norm("bn", policy),
        keras.layers.ReLU(name="relu", dtype=policy),
        keras.layers.ZeroPadding2D(dilation * (kernel_size // 2), name="pad",
                                   dtype=policy),
        keras.layers.DepthwiseConv2D(
            kernel_size, dilation_rate=dilation, padding="valid",
            use_bias=False, depthwise_initializer=init.depthwise_initializer(),
            name="depthwise", dtype=policy),
        init.conv1x1(channels, 1, "pointwise", policy),
    ]

  def get_config(self):
    config = super().get_config()
    del config["stride"]
    config.update({"kernel_size": self.kernel_size, "dilation": self.dilation})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TreeConv1x1(_TreeSequenceOp):
  """BN -> ReLU -> 1x1 conv C -> C, stride s (C^2 + 2C params)."""

  def __init__(self, channels: int, stride: int = 1, **kwargs):
    super().__init__(channels, stride, **kwargs)
    policy = self.dtype_policy
    self._chain += [init.batch_norm("bn", policy),
                    keras.layers.ReLU(name="relu", dtype=policy),
                    init.conv1x1(channels, stride, "conv", policy)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class SamePool3x3(_TreeSequenceOp):
  """3x3 stride-1 pooling, padding excluded from averages and maxima.

  PyTorch's AvgPool2d(3, 1, 1, count_include_pad=False) and MaxPool2d(3, 1,
  1) (which pads with -inf) are Keras 'same' pooling at stride 1.
  """

  def __init__(self, channels: int, pool_type: str = "avg", **kwargs):
    super().__init__(channels, 1, **kwargs)
    if pool_type not in ("avg", "max"):
      raise ValueError(
          f"`pool_type` must be 'avg' or 'max'. Received: pool_type={pool_type!r}.")
    self.pool_type = pool_type
    pool_cls = (keras.layers.AveragePooling2D if pool_type == "avg"
                else keras.layers.MaxPooling2D)
    self._chain.append(pool_cls(3, strides=1, padding="same",
                                name=f"{pool_type}_pool", dtype=self.dtype_policy))

  def get_config(self):
    config = super().get_config()
    del config["stride"]
    config["pool_type"] = self.pool_type
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TreeIdentity(_TreeSequenceOp):
  """y = x (the `identity` edge; no parameters)."""

  def __init__(self, channels: int, **kwargs):
    super().__init__(channels, 1, **kwargs)

  def call(self, inputs, training=None):
    return inputs

  def get_config(self):
    config = super().get_config()
    del config["stride"]
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupConv3x3(keras.layers.Layer):
  """BN -> ReLU -> pad 1 -> 3x3 group conv (G = 2) -> [channel shuffle].

  The group conv is two plain convs on the two channel halves (identical
  parameters and PyTorch fan-in, and no reliance on grouped-conv kernels,
  which TF's CPU backend lacks). With `shuffle` the output channels are
  interleaved across the groups as ShuffleNet's shuffle does (PX layers.py
  ConvLayer with has_shuffle): out[2i + g] = group_g[i].

  Args:
    channels: input channels C (even).
    out_channels: output channels (even); C (gconv3) or 2C (gconv3_x2).
    stride: 1, or 2 in a downsampling block.
    shuffle: interleave the two groups' outputs.
  """

  def __init__(self, channels: int, out_channels: int | None = None,
               stride: int = 1, shuffle: bool = False, **kwargs):
    super().__init__(**kwargs)
    out_channels = channels if out_channels is None else out_channels
    init.check_positive("channels", channels)
    init.check_positive("out_channels", out_channels)
    init.check_stride(stride)
    for name, value in (("channels", channels), ("out_channels", out_channels)):
      if value % GROUPS:
        raise ValueError(
            f"`{name}` must be divisible by the {GROUPS} groups. Received: "
            f"{name}={value}.")
    self.channels = channels
    self.out_channels = out_channels
    self.stride = stride
    self.shuffle = bool(shuffle)
    policy = self.dtype_policy
    self.bn = init.batch_norm("bn", policy)
    self.relu = keras.layers.ReLU(name="relu", dtype=policy)
    self.pad = keras.layers.ZeroPadding2D(1, name="pad", dtype=policy)
    self.group_convs = [
        keras.layers.Conv2D(
            out_channels // GROUPS, 3, strides=stride, padding="valid",
            use_bias=False, kernel_initializer=init.conv_initializer(),
            name=f"conv_group{g}", dtype=policy)
        for g in range(GROUPS)]

  @property
  def output_channels(self) -> int:
    return self.out_channels

  def build(self, input_shape):
    if input_shape[-1] is not None and input_shape[-1] != self.channels:
      raise ValueError(
          f"GroupConv3x3 expects {self.channels} input channels. Received: "
          f"input_shape={tuple(input_shape)}.")
    shape = init.build_sequence([self.bn, self.relu, self.pad], input_shape)
    group_shape = tuple(shape[:-1]) + (self.channels // GROUPS,)
    for conv in self.group_convs:
      conv.build(group_shape)
    self.built = True

  def call(self, inputs, training=None):
    x = self.pad(self.relu(self.bn(inputs, training=training)))
    halves = tf.split(x, GROUPS, axis=-1)
    outputs = [conv(h) for conv, h in zip(self.group_convs, halves)]
    if self.shuffle:
      # Stack on a new last axis, then flatten: channel 2i + g is group g's i.
      return tf.reshape(tf.stack(outputs, axis=-1),
                        tf.concat([tf.shape(outputs[0])[:-1],
                                   [self.out_channels]], axis=0))
    return tf.concat(outputs, axis=-1)

  def compute_output_shape(self, input_shape):
    return init.strided_shape(input_shape, self.stride, self.out_channels)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "out_channels": self.out_channels,
                   "stride": self.stride, "shuffle": self.shuffle})
    return config


def _no_stride(op_name: str, factory):
  def make(*, channels, stride, name, dtype=None):
    if stride != 1:
      raise ValueError(
          f"tree op {op_name!r} cannot downsample; an edge with stride 2 "
          "needs gconv3 or conv1x1")
    return factory(channels, name, dtype)
  return make


TreeOpFactory = Callable[..., keras.layers.Layer]

# The edge-op registry of tree cells; factories are keyword-only (channels,
# stride, name, dtype: the Keras dtype policy). Candidate order of the
# ProxylessNAS space follows this dict.
TREE_OPS: Dict[str, TreeOpFactory] = {
    "identity": _no_stride("identity", lambda c, n, d: TreeIdentity(c, name=n, dtype=d)),
    "sep3": _no_stride("sep3", lambda c, n, d: TreeSepConv(c, 3, 1, name=n, dtype=d)),
    "sep5": _no_stride("sep5", lambda c, n, d: TreeSepConv(c, 5, 1, name=n, dtype=d)),
    "sep7": _no_stride("sep7", lambda c, n, d: TreeSepConv(c, 7, 1, name=n, dtype=d)),
    "dil_sep3": _no_stride("dil_sep3",
                           lambda c, n, d: TreeSepConv(c, 3, 2, name=n, dtype=d)),
    "avg3": _no_stride("avg3", lambda c, n, d: SamePool3x3(c, "avg", name=n, dtype=d)),
    "max3": _no_stride("max3", lambda c, n, d: SamePool3x3(c, "max", name=n, dtype=d)),
    "conv1x1": lambda *, channels, stride, name, dtype=None: TreeConv1x1(
        channels, stride, name=name, dtype=dtype),
    "gconv3": lambda *, channels, stride, name, dtype=None: GroupConv3x3(
        channels, channels, stride, name=name, dtype=dtype),
}
TREE_PRIMITIVES: Tuple[str, ...] = op_names.TREE_OP_NAMES

# Cell-level pre-edges (run before the root node; they carry the stride).
PRE_EDGES: Dict[str, TreeOpFactory] = {
    "gconv3_x2": lambda *, channels, stride, name, dtype=None: GroupConv3x3(
        channels, 2 * channels, stride, shuffle=True, name=name, dtype=dtype),
}
check_registry(TREE_OPS, op_names.TREE_OP_NAMES, "ops.TREE_OPS")
check_registry(PRE_EDGES, op_names.PRE_EDGE_WIDTH, "ops.PRE_EDGES")
PRE_EDGE_WIDTH = op_names.PRE_EDGE_WIDTH  # Output channels as a multiple of C.

# Trainable parameters on C channels (PROXYLESS.md 1.4), for checks and
# reports without building layers.
_PARAMS = {
    "identity": lambda c: 0, "avg3": lambda c: 0, "max3": lambda c: 0,
    "sep3": lambda c: c * c + 11 * c, "dil_sep3": lambda c: c * c + 11 * c,
    "sep5": lambda c: c * c + 27 * c, "sep7": lambda c: c * c + 51 * c,
    "conv1x1": lambda c: c * c + 2 * c,
    "gconv3": lambda c: 9 * c * c // 2 + 2 * c,
    "gconv3_x2": lambda c: 9 * c * c + 2 * c,
}


def op_params(op_name: str, channels: int) -> int:
  """Trainable parameters of a tree op (or pre-edge) on `channels` channels."""
  return _PARAMS[op_name](channels)


def make_tree_op(op_name: str, channels: int, stride: int = 1,
                 name: str | None = None, dtype=None) -> keras.layers.Layer:
  """The tree op `op_name`; `dtype`: its Keras dtype policy (and its
  sublayers')."""
  op_names.check_tree_ops([op_name])
  return TREE_OPS[op_name](channels=channels, stride=stride,
                           name=name or op_name, dtype=dtype)


def make_pre_edge(kind: str, channels: int, stride: int = 1,
                  name: str = "pre_edge", dtype=None) -> keras.layers.Layer:
  if kind not in PRE_EDGES:
    raise ConfigError(
        f"unknown pre-edge {kind!r}; valid pre-edges are {', '.join(PRE_EDGES)}")
  return PRE_EDGES[kind](channels=channels, stride=stride, name=name,
                         dtype=dtype)
