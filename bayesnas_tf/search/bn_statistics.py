"""Re-estimating the supernet's BN moving statistics before they are read.

The supernet trains with batch statistics; its evaluation and its gate
Hessian (BN in inference mode, DESIGN.md 6) read the moving averages. With
the search's constant learning rates the weights and the shrinking gates
move up to the last step, and momentum-0.9 averages over the last ~10
batches describe networks that no longer exist. Measured on digits (5 cells,
C = 8): after the joint phase at lr 0.05 the supernet scored 0.58 test
accuracy with its moving statistics and 0.91 with re-estimated ones; at lr
0.1, 0.11 against 0.86, so the Hessian was taken of a network at chance.

So at the end of each training phase and after the prune, the statistics
are recomputed with the weights fixed, as the plain mean over `batches`
batches of un-augmented training images (the step the compressor takes after
pruning): BN's momentum is raised to k/(k+1) at batch k, so every batch
weighs the same and nothing of the stale averages is left.
"""

from __future__ import annotations

from absl import logging
import tensorflow as tf

from bayesnas_tf.batch_norm import BatchNorm

# Batches the re-estimated statistics average over.
BATCHES = 20


def reestimate_batch_norm(net, dataset: tf.data.Dataset,
                          strategy: tf.distribute.Strategy) -> int:
  """Replaces the moving statistics of every `BatchNorm` in `net` by their
  mean over the (images, labels) batches of `dataset`; returns how many
  batches were used. Weights, gates and masks are not changed."""
  # Keras's own walk over nested layers (cells and edges keep theirs in lists).
  layers = [layer for layer in net._flatten_layers(include_self=False)  # pylint: disable=protected-access
            if isinstance(layer, BatchNorm)]
  if not layers:
    return 0
  with strategy.scope():
    momentum = tf.Variable(0.0, trainable=False, name="bn_reestimation_momentum")

  @tf.function
  def step(images):
    strategy.run(lambda x: net(x, training=True), args=(images,))

  saved = [layer.momentum for layer in layers]
  batches = 0
  try:
    for layer in layers:  # Read when `step` is traced; restored below.
      layer.momentum = momentum
    for images, _ in strategy.experimental_distribute_dataset(dataset):
      momentum.assign(batches / (batches + 1.0))
      step(images)
      batches += 1
  finally:
    for layer, value in zip(layers, saved):
      layer.momentum = value
  logging.info("BN statistics re-estimated on %d batch(es)", batches)
  return batches
