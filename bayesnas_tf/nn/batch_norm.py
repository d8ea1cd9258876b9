"""`BatchNorm`: PyTorch-equivalent batch norm built on the fused TF kernel.

Why not `keras.layers.BatchNormalization`: a supernet holds hundreds of BNs,
and Keras's unfused implementation emits many small ops per BN (more with
`synchronized=True`), which dominates graph size, tracing time and per-step
dispatch on small inputs. The fused kernel is one op forward and one backward.

Semantics follow the official code (ALGORITHM.md 1.1, 9.1): affine, eps 1e-5,
moving averages with momentum 0.1 (Keras convention: keep 0.9), and the
running variance updated with the unbiased batch variance, as PyTorch does
(`FusedBatchNormV3` returns exactly that in training mode).

Under a `tf.distribute` strategy with several replicas the training-mode
statistics are those of the global batch (all-reduced sums), so N replicas
compute what one device computes.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from bayesnas_tf.nn import PACKAGE


# Set while a recomputed forward pass is traced (recompute.py): the batch
# statistics are computed again (the output must equal the first pass's) but
# the moving averages, already updated by the first pass, are left alone.
_FROZEN = threading.local()


@contextlib.contextmanager
def frozen_moving_statistics():
  """Training-mode BN inside the block does not update moving averages."""
  previous = getattr(_FROZEN, "active", False)
  _FROZEN.active = True
  try:
    yield
  finally:
    _FROZEN.active = previous


def bfloat16_on_cpu(x: tf.Tensor) -> bool:
  """Whether `x` is bfloat16 on a machine without a GPU.

  There, TF's bfloat16 kernels for batch norm and depthwise convolutions
  are slow paths (measured with AVX512-BF16: training-mode FusedBatchNormV3
  about 4x, strided or 5x5 depthwise convolutions 2-10x slower than the
  float32 kernel plus a cast each way), while dense convolutions gain
  2-3.5x. Those ops therefore run in float32 there (the fused BN kernel
  computes in float32 for bfloat16 input anyway). GPUs run bfloat16
  natively, and XLA (TPUs) fuses such casts.
  """
  return x.dtype == tf.bfloat16 and not tf.config.list_physical_devices("GPU")


def _replicas_in_sync() -> int:
  context = tf.distribute.get_replica_context()
  return context.num_replicas_in_sync if context is not None else 1


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNorm(keras.layers.Layer):
  """Batch norm over the last axis of an NHWC (or NC) tensor.

  Args:
    momentum: moving average decay (Keras convention; PyTorch 0.1 -> 0.9).
    epsilon: variance epsilon (PyTorch default 1e-5).
    affine: learn a scale and an offset per channel (PyTorch `affine`);
      without them the output is the plain normalised input (the
      NAS-Bench-201 and DARTS search cells' BNs).
  """

  def __init__(self, momentum: float = 0.9, epsilon: float = 1e-5,
               affine: bool = True, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= momentum < 1.0:
      raise ValueError(
          f"`momentum` must be in [0, 1). Received: momentum={momentum!r}.")
    if not epsilon > 0:
      raise ValueError(f"`epsilon` must be > 0. Received: epsilon={epsilon!r}.")
    self.momentum = float(momentum)
    self.epsilon = float(epsilon)
    self.affine = bool(affine)

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(
          f"BatchNorm needs a known channel count. Received: "
          f"input_shape={tuple(input_shape)}.")
    shape = (int(channels),)
    self.gamma = self.beta = None
    if self.affine:
      self.gamma = self.add_weight(name="gamma", shape=shape,
                                   initializer="ones", autocast=False)
      self.beta = self.add_weight(name="beta", shape=shape,
                                  initializer="zeros", autocast=False)
    # Moving statistics are identical on every replica (global-batch
    # statistics), so replica-context updates keep the first replica's value.
    self.moving_mean = self.add_weight(
        name="moving_mean", shape=shape, initializer="zeros", trainable=False,
        autocast=False, aggregation="only_first_replica")
    self.moving_variance = self.add_weight(
        name="moving_variance", shape=shape, initializer="ones",
        trainable=False, autocast=False, aggregation="only_first_replica")
    self.built = True

  def call(self, inputs, training=None):
    x = inputs
    flat = x.shape.rank == 2
    if flat:  # The fused kernel wants 4-D input.
      x = x[:, tf.newaxis, tf.newaxis, :]
    upcast = bfloat16_on_cpu(x)
    if upcast:
      x = tf.cast(x, tf.float32)
    if self.affine:
      gamma = tf.cast(self.gamma.value, tf.float32)
      beta = tf.cast(self.beta.value, tf.float32)
    else:
      gamma = tf.ones(self.moving_mean.shape, tf.float32)
      beta = tf.zeros(self.moving_mean.shape, tf.float32)
    # The fused kernel has no float64 version (float64 is used by the
    # finite-difference checks of the Hessian tests).
    unfused = x.dtype == tf.float64
    if training and (unfused or _replicas_in_sync() > 1):
      y, mean, variance = self._global_batch_statistics(x, gamma, beta)
    elif unfused:
      y = tf.nn.batch_normalization(
          x, tf.cast(self.moving_mean.value, x.dtype),
          tf.cast(self.moving_variance.value, x.dtype), tf.cast(beta, x.dtype),
          tf.cast(gamma, x.dtype), self.epsilon)
    elif training:
      y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=tf.zeros_like(gamma),
          variance=tf.zeros_like(gamma), epsilon=self.epsilon,
          exponential_avg_factor=1.0, is_training=True)
    else:
      y, *_ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta,
          mean=tf.cast(self.moving_mean.value, tf.float32),
          variance=tf.cast(self.moving_variance.value, tf.float32),
          epsilon=self.epsilon, is_training=False)
    if training and not getattr(_FROZEN, "active", False):
      decay = 1.0 - self.momentum
      for moving, batch in ((self.moving_mean, mean),
                            (self.moving_variance, variance)):
        batch = tf.cast(tf.stop_gradient(batch), moving.dtype)
        moving.assign_sub((moving.value - batch) * decay)
    if flat:
      y = y[:, 0, 0, :]
    return tf.cast(y, inputs.dtype) if upcast else y

  def _global_batch_statistics(self, x, gamma, beta):
    """Statistics of the global batch: one all-reduce of the sums.

    With one replica (or in cross-replica context) the all-reduce is skipped.
    """
    context = tf.distribute.get_replica_context()
    compute = tf.float64 if x.dtype == tf.float64 else tf.float32
    x32 = tf.cast(x, compute)
    gamma, beta = tf.cast(gamma, compute), tf.cast(beta, compute)
    axes = [0, 1, 2]
    count = tf.cast(tf.reduce_prod(tf.shape(x32)[:-1]), compute)
    total = tf.concat([tf.reduce_sum(x32, axes), tf.reduce_sum(tf.square(x32), axes),
                       tf.reshape(count, [1])], axis=0)
    if context is not None and context.num_replicas_in_sync > 1:
      total = context.all_reduce(tf.distribute.ReduceOp.SUM, total)
    channels = gamma.shape[0]
    n = total[-1]
    mean = total[:channels] / n
    variance = tf.maximum(total[channels:2 * channels] / n - tf.square(mean), 0.0)
    y = tf.nn.batch_normalization(x32, mean, variance, beta, gamma, self.epsilon)
    unbiased = variance * n / tf.maximum(n - 1.0, 1.0)
    return (tf.cast(y, x.dtype), tf.cast(mean, tf.float32),
            tf.cast(unbiased, tf.float32))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"momentum": self.momentum, "epsilon": self.epsilon,
                   "affine": self.affine})
    return config
