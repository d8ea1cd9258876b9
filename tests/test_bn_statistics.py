"""Re-estimated BN moving statistics are the plain mean over the batches,
whatever stale values they replace (bn_statistics.py)."""

import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.nn import bn_statistics
from bayesnas_tf.nn.batch_norm import BatchNorm


class TwoNorms(keras.Model):
  """Our BN nested in a list (as in the cells) and a Keras BN."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.blocks = [BatchNorm(name="ours")]
    self.keras_bn = keras.layers.BatchNormalization(name="theirs")

  def call(self, x, training=None):
    return self.keras_bn(self.blocks[0](x, training=training), training=training)


def test_moving_statistics_become_the_mean_over_the_batches():
  net = TwoNorms(name="two_norms")
  net(tf.zeros((1, 2, 2, 3)))  # Builds every layer.
  layers = bn_statistics.batch_norm_layers(net)
  assert {layer.name for layer in layers} == {"ours", "theirs"}
  ours = layers[0] if layers[0].name == "ours" else layers[1]
  ours.moving_mean.assign([100.0, -100.0, 7.0])  # Stale values.
  rng = np.random.RandomState(0)
  batches = [rng.normal(loc=[1.0, 2.0, 3.0], size=(4, 2, 2, 3)).astype(np.float32)
             for _ in range(5)]
  strategy = tf.distribute.get_strategy()
  estimator = bn_statistics.MovingStatisticsEstimator(
      layers, lambda x: net(x, training=True), strategy)
  assert estimator([(tf.constant(b), None) for b in batches]) == 5
  expected = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
  np.testing.assert_allclose(ours.moving_mean.numpy(), expected, rtol=1e-5, atol=1e-5)
  # Reused (one trace) on other batches: their mean, nothing of the first.
  assert estimator([(tf.constant(b + 10.0), None) for b in batches[:2]]) == 2
  expected = np.mean([b.mean(axis=(0, 1, 2)) + 10.0 for b in batches[:2]], axis=0)
  np.testing.assert_allclose(ours.moving_mean.numpy(), expected, rtol=1e-5, atol=1e-5)
  # The layers' own momentum is back for training.
  assert ours.momentum == 0.9 and isinstance(layers[1].momentum, float)
