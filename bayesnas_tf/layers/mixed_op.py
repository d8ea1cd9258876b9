"""`MixedOp`: every primitive on one edge, weighted and summed (paper eq. 1)."""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from bayesnas_tf.layers import op_registry
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixedOp(keras.layers.Layer):
  """y = sum_o weights[o] * op_o(x) over the active primitives.

  Args:
    channels: input = output channels of the edge.
    stride: 1, or 2 for edges leaving a cell input of a reduction cell.
    primitives: op names of the op set, in gate order (default: all of its
      ops).
    op_set: the registered op set the ops come from (layers/op_registry.py;
      "darts": the 7 primitives of the DAG cells).
  """

  def __init__(self, channels: int, stride: int = 1,
               primitives: Optional[Sequence[str]] = None,
               op_set: str = "darts", **kwargs):
    super().__init__(**kwargs)
    registered = op_registry.get_op_set(op_set)
    self.op_set = op_set
    self.primitives = registered.check(
        registered.op_names if primitives is None else primitives)
    self.channels = channels
    self.stride = stride
    self.candidate_ops = [
        registered.factory(name, channels, stride, name=name,
                           dtype=self.dtype_policy)
        for name in self.primitives]

  def build(self, input_shape):
    for op in self.candidate_ops:
      op.build(input_shape)
    self.built = True

  def call(self, inputs, weights, active: Optional[Sequence[int]] = None,
           training=None):
    """Weights have shape (num_ops,) or, per example, (batch, num_ops).

    `active` lists the op indices to compute; pruned ops are skipped, not
    multiplied by zero, so they cost nothing.
    """
    if active is None:
      active = range(len(self.candidate_ops))
    total = None
    for index in active:
      term = init.scale_by(
          self.candidate_ops[index](inputs, training=training),
          weights[..., index])
      total = term if total is None else total + term
    if total is None:
      return tf.zeros(self._output_shape_of(inputs), dtype=inputs.dtype)
    return total

  def _output_shape_of(self, inputs):
    shape = tf.shape(inputs)
    return tf.stack([shape[0], (shape[1] - 1) // self.stride + 1,
                     (shape[2] - 1) // self.stride + 1, self.channels])

  def compute_output_shape(self, input_shape):
    return self.candidate_ops[0].compute_output_shape(input_shape)

  def compute_output_spec(self, inputs, weights=None, active=None,
                          training=None):
    # The output depends on the input's shape only; `weights` may be left
    # out of a symbolic call (Keras's layer test does).
    del weights, active, training
    return keras.KerasTensor(self.compute_output_shape(inputs.shape),
                             dtype=self.compute_dtype)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "stride": self.stride,
                   "primitives": list(self.primitives), "op_set": self.op_set})
    return config
