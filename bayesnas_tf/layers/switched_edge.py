"""`SwitchedEdge`: a MixedOp whose ops carry BayesNAS gates (ALGORITHM.md 1.1, 2).

output = sum_o mask_o w_o op_o(mask_all w_all x)

`w` (one gate per op) and `w_all` (the edge gate, the paper's i -> i' identity
of Sec. 4.2, "zero operation ruling all") are trained by SGD; `w_all` starts
at 1 and `w` at `gate_init` (Algorithm 1's w(0) = 1, unless a space starts
its edges as the mean of their ops: spaces/nb201/network.py).
The non-trainable `mask` has one entry per op plus a last one for `w_all`; a
pruned gate's mask is 0 and its op is not computed at all.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.layers.mixed_op import MixedOp
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwitchedEdge(keras.layers.Layer):
  """One gated edge of a BayesNAS cell.

  Args:
    channels: input = output channels.
    stride: 1, or 2 for edges leaving a cell input of a reduction cell.
    primitives: op names of the op set, in gate order (default: all).
    op_set: the registered op set of the ops (see `MixedOp`).
    gate_init: the initial value of the op gates `w` (w(0); the paper: 1).

  `call(x, gate_offsets=None)`: `gate_offsets`, of shape (batch, num_ops + 1),
  is added to the gates per example. The Hessian estimators differentiate
  with respect to these zero offsets to get per-example gate gradients
  (DESIGN.md 6).
  """

  def __init__(self, channels: int, stride: int = 1,
               primitives: Optional[Sequence[str]] = None,
               op_set: str = "darts", gate_init: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    if not gate_init > 0:
      raise ValueError(f"`gate_init` must be > 0. Received: gate_init={gate_init!r}.")
    self.gate_init = float(gate_init)
    self.channels = channels
    self.stride = stride
    self.op_set = op_set
    self.mixed_op = MixedOp(channels, stride, primitives, op_set,
                            name="mixed_op", dtype=self.dtype_policy)
    self.primitives = self.mixed_op.primitives
    self._active_ops: Tuple[int, ...] = tuple(range(len(self.primitives)))
    self._edge_active = True

  @property
  def num_ops(self) -> int:
    return len(self.primitives)

  def build(self, input_shape):
    self.w = self.add_weight(
        name="w", shape=(self.num_ops,),
        initializer=keras.initializers.Constant(self.gate_init), trainable=True)
    self.w_all = self.add_weight(
        name="w_all", shape=(), initializer="ones", trainable=True)
    self.mask = self.add_weight(
        name="mask", shape=(self.num_ops + 1,), initializer="ones",
        trainable=False)
    self.mixed_op.build(input_shape)
    self.built = True

  @property
  def gate_variables(self):
    return [self.w, self.w_all]

  @property
  def active_ops(self) -> Tuple[int, ...]:
    """Op indices that are computed (mask 1, and the edge gate is on)."""
    return self._active_ops if self._edge_active else ()

  def gates(self) -> tf.Tensor:
    """The effective gates (num_ops + 1,): [mask_o w_o..., mask_all w_all]."""
    raw = tf.concat([self.w.value, tf.reshape(self.w_all.value, [1])], axis=0)
    return raw * self.mask.value

  def set_mask(self, mask) -> None:
    """Sets the pruning mask (num_ops + 1,) and which ops are computed."""
    mask = np.asarray(mask, dtype=np.float32).reshape(self.num_ops + 1)
    self.mask.assign(mask)
    self.sync_active_ops()

  def sync_active_ops(self) -> None:
    """Re-reads the mask variable (eagerly), e.g. after a checkpoint restore.

    The active set is Python state so that traced functions leave pruned ops
    out of the graph; step functions are re-traced after every change.
    """
    mask = np.asarray(self.mask.numpy())
    self._active_ops = tuple(int(i) for i in np.flatnonzero(mask[:-1] > 0))
    self._edge_active = bool(mask[-1] > 0)

  def call(self, inputs, gate_offsets=None, training=None):
    if not self.active_ops:
      return tf.zeros(self.mixed_op._output_shape_of(inputs), inputs.dtype)
    gates = self.gates()
    if gate_offsets is not None:
      gates = (gates[tf.newaxis, :] + tf.cast(gate_offsets, gates.dtype)) * (
          self.mask.value[tf.newaxis, :])
    edge_input = init.scale_by(inputs, gates[..., -1])
    return self.mixed_op(edge_input, gates[..., :-1], active=self.active_ops,
                         training=training)

  def compute_output_shape(self, input_shape):
    return self.mixed_op.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "stride": self.stride,
                   "primitives": list(self.primitives), "op_set": self.op_set,
                   "gate_init": self.gate_init})
    return config
