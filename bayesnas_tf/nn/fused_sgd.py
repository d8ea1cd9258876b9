"""`MomentumSGD`: Keras SGD whose momentum update is one TensorFlow op per variable.

Keras 3's SGD writes each variable's update as about eight small graph ops
(casts, two products, a difference, two assignments, their reads). A
supernet step updates hundreds of variables, so in a traced search step the
optimiser was about a fifth of the graph (3-cell supernet: 10,379 ops with
Keras's update), and every op costs tracing, graph set-up and dispatch time.
TensorFlow's `ResourceApplyKerasMomentum` kernel is the same update as
Keras's non-Nesterov SGD,

    accum = momentum * accum - lr * grad;   var += accum

in one op (XLA compiles it too). Variables, momentum slots, clipping,
checkpoints and the config are Keras's own, so checkpoints of either class
restore into the other. Nesterov momentum, momentum 0 and other Keras
backends use Keras's update.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bayesnas_tf.nn import PACKAGE


def _handle(variable):
  """The resource handle of a Keras or TF variable (the component on this
  device inside a `tf.distribute` update)."""
  if isinstance(variable, keras.Variable):
    variable = variable.value
  return variable.handle


@keras.saving.register_keras_serializable(package=PACKAGE)
class MomentumSGD(keras.optimizers.SGD):
  """`keras.optimizers.SGD` with a fused momentum update (same arguments)."""

  def update_step(self, gradient, variable, learning_rate):
    if (self.momentum == 0 or self.nesterov
        or keras.backend.backend() != "tensorflow"):
      return super().update_step(gradient, variable, learning_rate)
    accum = self.momentums[self._get_variable_index(variable)]
    dtype = variable.dtype
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=_handle(variable), accum=_handle(accum),
        lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
        momentum=tf.cast(self.momentum, dtype), use_locking=False,
        use_nesterov=False)
    return None
