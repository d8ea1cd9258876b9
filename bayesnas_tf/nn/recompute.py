"""Activation recomputation (`--recompute_cells`): trade compute for memory.

`recompute_grad(fn)` returns a function with fn's outputs whose backward pass
runs fn's forward pass again instead of keeping its intermediate tensors:
only fn's inputs stay alive between the forward and the backward pass. The
supernet wraps each cell this way in training, so the peak memory of a step
holds the cell boundaries plus one cell's activations, instead of every
activation of every cell (the supernet's memory grows with the number of
candidate ops, ALGORITHM.md 3.4.1).

Why not `tf.recompute_grad` itself: it would run the cell's training-mode
batch norms twice, and the second run would update their moving averages a
second time. Here the recomputation runs inside
`batch_norm.frozen_moving_statistics()`: it recomputes the batch statistics
(the same input gives the same output) and leaves the moving averages alone,
so a step computes exactly what it computes without recomputation.

Like `tf.recompute_grad`, the recomputation takes a data dependency on the
incoming gradient, so a graph executor (or XLA) cannot run it early, during
the forward pass, which would keep its tensors alive after all.

fn must be deterministic (the supernet has no dropout); the drop-path masks
of the retrain networks are random, so those are not recomputed.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from bayesnas_tf.nn import batch_norm


def _after(tensors, gradient):
  """`tensors` unchanged, but computed only once `gradient` exists."""
  first = tf.reshape(gradient, [-1])[:1]
  # max of an empty slice is -inf, not NaN, so size-0 gradients work too.
  element = tf.cast(tf.reduce_max(first), tf.float32)
  dependency = tf.where(tf.math.is_nan(element), float("nan"), 0.0)
  return [t + tf.cast(dependency, t.dtype) for t in tensors]


def recompute_grad(fn: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
  """fn(*tensors) -> tensor, recomputed in the backward pass (module doc)."""

  @tf.custom_gradient
  def wrapped(*inputs):
    output = fn(*inputs)

    def grad(upstream, variables=None):
      variables = list(variables or [])
      with tf.GradientTape() as tape:
        replayed = _after(inputs, upstream)
        tape.watch(replayed)
        with batch_norm.frozen_moving_statistics():
          recomputed = fn(*replayed)
      grads = tape.gradient(
          recomputed, replayed + variables, output_gradients=upstream,
          unconnected_gradients=tf.UnconnectedGradients.ZERO)
      return grads[:len(inputs)], grads[len(inputs):]

    return output, grad

  return wrapped
