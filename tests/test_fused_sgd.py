"""fused_sgd.MomentumSGD against keras.optimizers.SGD: the same updates,
slots, config and checkpoints. Under several replicas (the fused op writes
each replica's copy inside the strategy's update) it is checked end to end
by test_scale_out.py: mirrored and two-worker searches and a two-worker
retrain equal one process, optimizer momenta included."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.nn.fused_sgd import MomentumSGD


def _variables(seed):
  rng = np.random.default_rng(seed)
  return [keras.Variable(rng.normal(size=(3, 4)).astype(np.float32), name="a"),
          keras.Variable(rng.normal(size=(5,)).astype(np.float32), name="b")]


def _gradients(step):
  rng = np.random.default_rng(100 + step)
  return [tf.constant(rng.normal(size=(3, 4)).astype(np.float32)),
          tf.constant(rng.normal(size=(5,)).astype(np.float32))]


def _run(optimizer, variables, wrap, steps=4):
  optimizer.build(variables)
  apply = wrap(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
  for step in range(steps):
    apply(_gradients(step))
  return ([v.numpy() for v in variables],
          [m.numpy() for m in optimizer.momentums])


@pytest.mark.parametrize("wrap", [
    lambda f: f, tf.function, lambda f: tf.function(f, jit_compile=True)],
    ids=["eager", "graph", "xla"])
@pytest.mark.parametrize("kwargs", [
    {"momentum": 0.9}, {"momentum": 0.5, "global_clipnorm": 0.5},
    {"momentum": 0.9, "nesterov": True}, {"momentum": 0.0}])
def test_updates_equal_keras_sgd(wrap, kwargs):
  expected = _run(keras.optimizers.SGD(0.1, **kwargs), _variables(0), wrap)
  got = _run(MomentumSGD(0.1, **kwargs), _variables(0), wrap)
  for e, g in zip(expected[0] + expected[1], got[0] + got[1]):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
  assert not np.allclose(got[0][0], _variables(0)[0].numpy())   # it moved


def test_config_round_trip_and_checkpoints_interchange(tmp_path):
  optimizer = MomentumSGD(0.03, momentum=0.8, global_clipnorm=2.0, name="w")
  config = optimizer.get_config()
  again = MomentumSGD.from_config(config)
  assert again.get_config() == config
  restored = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(optimizer))
  assert isinstance(restored, MomentumSGD) and restored.get_config() == config
  # A checkpoint written with Keras's SGD restores into MomentumSGD.
  variables = _variables(2)
  keras_sgd = keras.optimizers.SGD(0.1, momentum=0.9)
  _run(keras_sgd, variables, tf.function, steps=2)
  path = tf.train.Checkpoint(optimizer=keras_sgd).write(str(tmp_path / "ckpt"))
  fused = MomentumSGD(0.1, momentum=0.9)
  fused.build(_variables(3))
  tf.train.Checkpoint(optimizer=fused).read(path).assert_existing_objects_matched()
  for a, b in zip(keras_sgd.momentums, fused.momentums):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert int(fused.iterations.numpy()) == 2
