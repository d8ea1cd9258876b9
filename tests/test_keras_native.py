"""A derived network is an ordinary Keras model (issue 10, item 3): compile +
fit with standard callbacks, evaluate, .keras save/load and model.export,
with the auxiliary head feeding the fit loss and drop path in training only.

One tiny network (3 cells, C = 4, 8x8x1 images, 3 classes) is fitted once
per module; the tests read what that fit left behind.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.training.callbacks import DropPathSchedule
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.dag.child_net import ChildNetwork

SMALL = dict(num_classes=3, cells=3, channels=4)
EPOCHS = 2

# Keras's own .keras writer calls np.array(variable), which NumPy 2 flags.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")


def tiny_data(n=24, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.standard_normal((n, 8, 8, 1)).astype(np.float32)
  y = rng.randint(0, 3, size=n).astype(np.int64)
  return x, y


def compiled_net(**kwargs):
  model = ChildNetwork(KNOWN_GENOTYPES["bayesnas_l0.01"], **{**SMALL, **kwargs})
  model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  """A network with the auxiliary head and drop path: one train_on_batch
  step (drop probability still 0), then fit with ModelCheckpoint,
  TensorBoard and the drop-path ramp (the same traced train function)."""
  keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp("keras_native")
  x, y = tiny_data()
  model = compiled_net(auxiliary=True, drop_path="darts", auxiliary_weight=0.4)
  model.build((None, 8, 8, 1))
  head_before = [v.numpy().copy() for v in model.auxiliary_head.trainable_variables]
  # The loss of a step is computed before its update, from its one forward
  # pass (drop probability 0: no randomness; BN uses batch statistics).
  logits, aux = model(x[:8], training=True, return_auxiliary=True)
  ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  first_step = dict(
      expected=float(ce(y[:8], logits)) + 0.4 * float(ce(y[:8], aux)),
      logs=model.train_on_batch(x[:8], y[:8], return_dict=True),
      head_changed=any(not np.array_equal(a, b.numpy()) for a, b in zip(
          head_before, model.auxiliary_head.trainable_variables)))
  history = model.fit(
      x, y, batch_size=8, epochs=EPOCHS, verbose=0, validation_data=(x, y),
      callbacks=[keras.callbacks.ModelCheckpoint(str(root / "epoch_{epoch}.keras")),
                 keras.callbacks.TensorBoard(str(root / "tb")),
                 DropPathSchedule(0.2, EPOCHS)])
  return dict(model=model, root=root, x=x, y=y, history=history,
              first_step=first_step)


def test_auxiliary_logits_feed_the_fit_loss(fitted):
  step = fitted["first_step"]
  assert step["logs"]["loss"] == pytest.approx(step["expected"], rel=1e-4)
  assert step["head_changed"]  # fit trains the auxiliary head.


def test_fit_with_standard_callbacks(fitted):
  root, history = fitted["root"], fitted["history"]
  assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
  assert all(np.isfinite(history.history["loss"]))
  # ModelCheckpoint wrote a model per epoch (the last one is loaded below).
  assert sorted(p.name for p in root.glob("epoch_*.keras")) == [
      f"epoch_{epoch}.keras" for epoch in range(1, EPOCHS + 1)]
  # TensorBoard wrote train and validation event files.
  for split in ("train", "validation"):
    files = os.listdir(root / "tb" / split)
    assert any(name.startswith("events.out.tfevents") for name in files), files
  # The drop-path ramp of our trainer: p = 0.2 * epoch / epochs per epoch.
  assert float(fitted["model"].drop_prob.numpy()) == pytest.approx(
      0.2 * (EPOCHS - 1) / EPOCHS)


def test_evaluate_and_predict_are_inference_mode(fitted):
  model, x, y = fitted["model"], fitted["x"], fitted["y"]
  assert float(model.drop_prob.numpy()) > 0
  # Drop path and batch statistics act in training only: evaluation and
  # prediction are deterministic and equal the inference call.
  first = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
  second = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
  assert first == second
  predicted = model.predict(x, batch_size=8, verbose=0)
  np.testing.assert_allclose(predicted, model(x, training=False).numpy(),
                             rtol=1e-5, atol=1e-5)
  # (That a training call drops paths is tests/test_child_net.py's; a
  # training call here would also move the BN statistics other tests read.)


def test_keras_checkpoint_loads_with_compile_state(fitted):
  model, x, y = fitted["model"], fitted["x"], fitted["y"]
  # The last ModelCheckpoint file holds the final state of the fit.
  revived = keras.saving.load_model(str(fitted["root"] / f"epoch_{EPOCHS}.keras"))
  assert isinstance(revived, ChildNetwork) and revived.auxiliary
  assert revived.auxiliary_weight == pytest.approx(0.4)
  assert revived.genotype == model.genotype
  np.testing.assert_allclose(revived(x, training=False).numpy(),
                             model(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
  # The compiled loss and optimizer come back: training continues.
  logs = revived.fit(x, y, batch_size=8, epochs=1, verbose=0).history
  assert np.isfinite(logs["loss"][0])


def test_model_export_serves_the_inference_call(fitted, tmp_path):
  model, x = fitted["model"], fitted["x"]
  path = str(tmp_path / "exported")
  model.export(path, verbose=False)
  loaded = tf.saved_model.load(path)  # Kept alive: it owns the variables.
  served = loaded.serve(tf.constant(x))
  np.testing.assert_allclose(served.numpy(), model(x, training=False).numpy(),
                             rtol=1e-5, atol=1e-5)


def test_drop_path_schedule_validates():
  with pytest.raises(ValueError, match="final_prob=1.0"):
    DropPathSchedule(1.0, 5)
  with pytest.raises(ValueError, match="epochs=0"):
    DropPathSchedule(0.2, 0)
  assert DropPathSchedule(0.2, 4).probability(2) == pytest.approx(0.1)
