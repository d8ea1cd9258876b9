"""Re-estimating BN moving statistics before inference-mode reads them.

The networks train with batch statistics; evaluation and the Hessians (BN in
inference mode, DESIGN.md 6) read the moving averages, which go stale in two
ways:

* the search: with its constant learning rates the weights and the
  shrinking gates move up to the last step, and momentum-0.9 averages over
  the last ~10 batches describe networks that no longer exist. Measured on
  digits (5 cells, C = 8): after the joint phase at lr 0.05 the supernet
  scored 0.58 test accuracy with its moving statistics and 0.91 with
  re-estimated ones; at lr 0.1, 0.11 against 0.86, so the Hessian was taken
  of a network at chance;
* compression: removing units shifts the inputs of the next layer's BN, and
  the pruned network's inference-mode accuracy collapses though nothing it
  computes has lost its information.

`reestimate_moving_statistics` recomputes them with the weights fixed, as
the plain mean over the given batches: each BN's momentum is raised to
k/(k+1) at batch k, so every batch weighs the same and nothing of the stale
averages is left.
"""

from __future__ import annotations

from typing import Callable, Iterable, List

from absl import logging
import keras
import tensorflow as tf

from bayesnas_tf.nn.batch_norm import BatchNorm

# Batches the search's re-estimated statistics average over.
SEARCH_BATCHES = 20


def batch_norm_layers(model: keras.layers.Layer) -> List[keras.layers.Layer]:
  """Every BN layer (ours and Keras's) nested anywhere in `model`."""
  # Keras's own walk over nested layers (cells and edges keep theirs in lists).
  return [layer for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(layer, (BatchNorm, keras.layers.BatchNormalization))]


class MovingStatisticsEstimator:
  """Re-estimates the moving statistics of `layers`; traced once, reusable
  while the network's structure stays the same.

  Args:
    layers: BN layers whose `momentum` is read when their call is traced.
    forward: runs the network on per-replica images in training mode (so the
      BN layers update their moving statistics); weights are not changed.
    strategy: the strategy the variables live under.
  """

  def __init__(self, layers, forward: Callable[[tf.Tensor], object],
               strategy: tf.distribute.Strategy):
    self.layers = list(layers)
    self.strategy = strategy
    with strategy.scope():
      self.momentum = tf.Variable(0.0, trainable=False,
                                  name="bn_reestimation_momentum")

    @tf.function
    def step(images):
      strategy.run(forward, args=(images,))

    self.step = step

  def __call__(self, batches: Iterable) -> int:
    """Replaces the moving statistics by their mean over `batches`
    (distributed (images, labels) batches); returns how many were used."""
    if not self.layers:
      return 0
    saved = [layer.momentum for layer in self.layers]
    count = 0
    try:
      for layer in self.layers:  # Read when `step` is traced; restored below.
        layer.momentum = self.momentum
      for images, _ in batches:
        self.momentum.assign(count / (count + 1.0))
        self.step(images)
        count += 1
    finally:
      for layer, value in zip(self.layers, saved):
        layer.momentum = value
    logging.info("BN statistics re-estimated on %d batch(es)", count)
    return count
