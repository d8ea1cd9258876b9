"""BatchNorm: PyTorch semantics on the fused kernel, checkpointed state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import testing
from bayesnas_tf.spaces.dag.supernet import SuperNet
from bayesnas_tf.nn.batch_norm import BatchNorm
from bayesnas_tf.runtime.checkpointing import variables_by_path


def _batch(shape=(16, 5, 5, 3), dtype="float32"):
  return tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=shape), dtype)


def test_layer_contract():
  layer = testing.run_layer_test(
      BatchNorm, {"momentum": 0.8, "epsilon": 1e-4}, input_shape=(4, 6, 6, 3),
      expected_output_shape=(4, 6, 6, 3), expected_num_trainable_weights=2,
      expected_num_trainable_params=6)
  assert layer.get_config()["momentum"] == 0.8


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_mode_matches_a_numpy_reference(dtype):
  x = _batch(dtype=dtype)
  layer = BatchNorm(momentum=0.9, epsilon=1e-5)
  layer.build(x.shape)
  layer.gamma.assign([1.5, 0.5, 2.0])
  layer.beta.assign([0.1, -0.2, 0.3])
  y = layer(x, training=True).numpy()
  v = x.numpy()
  mean, var = v.mean(axis=(0, 1, 2)), v.var(axis=(0, 1, 2))
  expected = (v - mean) / np.sqrt(var + 1e-5) * [1.5, 0.5, 2.0] + [0.1, -0.2, 0.3]
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  # PyTorch: running stats move 10% towards the batch, with the unbiased var.
  np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-4)
  unbiased = v.var(axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * unbiased,
                             rtol=1e-4)
  # Inference mode uses the moving statistics.
  y = layer(x, training=False).numpy()
  expected = ((v - layer.moving_mean.numpy()) /
              np.sqrt(layer.moving_variance.numpy() + 1e-5) * [1.5, 0.5, 2.0]
              + [0.1, -0.2, 0.3])
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_two_dimensional_input():
  x = _batch((8, 3))
  y = BatchNorm()(x, training=True).numpy()
  np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="momentum"):
    BatchNorm(momentum=1.0)
  with pytest.raises(ValueError, match="epsilon"):
    BatchNorm(epsilon=0.0)


def test_checkpoint_restores_every_variable_of_a_supernet(tmp_path):
  keras.utils.set_random_seed(0)
  net = SuperNet(4, 3, 2, primitives=("sep3", "max"))
  net.build((None, 8, 8, 1))
  net(tf.random.normal((4, 8, 8, 1)), training=True)   # move BN statistics
  mask = np.ones(3, np.float32)
  mask[0] = 0.0
  net.cells[1].edges[2].set_mask(mask)
  path = tf.train.Checkpoint(net=variables_by_path(net)).write(str(tmp_path / "ck"))
  keras.utils.set_random_seed(1)
  other = SuperNet(4, 3, 2, primitives=("sep3", "max"))
  other.build((None, 8, 8, 1))
  tf.train.Checkpoint(net=variables_by_path(other)).read(path).assert_consumed()
  other.sync_active_ops()
  assert len(net.variables) == len(other.variables)
  for a, b in zip(net.variables, other.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  assert other.cells[1].edges[2].active_ops == (1,)
  assert any("moving_mean" in v.path for v in net.non_trainable_variables)
