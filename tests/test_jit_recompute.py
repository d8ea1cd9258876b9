"""XLA (`jit_compile=True`) equals the plain graph for every step function,
and recomputing the supernet's cells (`recompute_cells`) changes nothing.

Tolerances: an XLA step fuses and reorders float32 sums differently from the
oneDNN kernels, so each output matches to rtol 1e-4 (atol 1e-5 on values of
order 1, 1e-3 relative on the Hessian's largest entry); recomputation runs
the same kernels on the same inputs, so its gradients and moving statistics
are equal to 1e-6.

The supernets are thinned out by masks (`thin_out`): pruned ops are not
computed, so a trace and an XLA compile cost a fraction of the full
supernet's, while every primitive still runs somewhere.
"""

import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import config as config_lib
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.spaces.dag.supernet import SuperNet
from bayesnas_tf.search import search_loop
from bayesnas_tf.spaces import registry

SUBSET = ("sep3", "dil3", "max", "avg", "id")
RTOL, ATOL = 1e-4, 1e-5


def thin_out(net):
  """Keeps one or two ops per edge (each primitive on some edge of each cell
  type, on stride-1 and stride-2 edges) and prunes the last edge whole, so
  its gates are unconnected (gradient 0)."""
  n = len(net.primitives)
  masks = {}
  for cell_type, full in net.masks_by_type().items():
    mask = np.zeros_like(full)
    for e in range(len(mask) - 1):
      mask[e, [e % n, (e + 2) % n] if e % 2 else [e % n]] = 1.0
      mask[e, -1] = 1.0
    masks[cell_type] = mask
  net.set_masks(masks)


def _search(jit: bool):
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset="digits", batch_size=8,
                                 max_train_examples=160, crop_padding=0,
                                 cutout=0, eval_batch_size=16,
                                 max_eval_examples=32),
      supernet=config_lib.SupernetConfig(cells=3, channels=4, primitives=SUBSET),
      runtime=config_lib.RuntimeConfig(model_dir=tempfile.mkdtemp(),
                                       progress=False, jit_compile=jit)).validate()
  keras.utils.set_random_seed(0)
  search = search_loop.BayesNASSearch(config, data_lib.load_dataset("digits"),
                                      tf.distribute.get_strategy())
  thin_out(search.net)
  return search


def _close(a, b, scale=1.0):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                             atol=ATOL * scale)


def test_search_step_functions_jit_equal_graph():
  plain, jit = _search(False), _search(True)
  for a, b in zip(plain.net.variables, jit.net.variables):
    b.assign(a)
  batch = next(b for _, b in plain.phase_batches(search_loop.SEARCH, 0))
  seed = tf.constant([3, 4], tf.int64)
  for method in ("ggn", "ggn_mc"):
    expected = plain.hessian_fn(method)(batch, seed)
    got = jit.hessian_fn(method)(batch, seed)
    for e, g in zip(expected, got):
      _close(g, e, scale=1e2 * float(np.abs(e).max()))
  _close(jit.eval_fn()(batch), plain.eval_fn()(batch))
  # The gate step; the warm-up step (train_gates=False) is the same function
  # without the gates' update.
  _close(jit.train_step_fn(True)(batch), plain.train_step_fn(True)(batch))
  for a, b in zip(plain.net.variables, jit.net.variables):
    _close(b, a)


def _cli_config(mode, model_dir, jit, extra):
  from bayesnas_tf import cli as main  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS([
      "main.py", f"--mode={mode}", "--dataset=digits", "--batch_size=16",
      "--max_train_examples=64", "--max_eval_examples=32", "--seed=1",
      f"--model_dir={model_dir}", f"--jit_compile={str(jit).lower()}",
      "--noprogress", *extra])
  return main.build_config()


def _first_train_batch(data):
  return next(iter(data.train(batch_size=16, seed=1, epoch=0)))


def test_retrain_steps_jit_equal_graph(tmp_path):
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.training import train as train_lib  # pylint: disable=g-import-not-at-top
  trainers = []
  for jit in (False, True):
    config = _cli_config("retrain", tmp_path / str(jit), jit, (
        "--genotype=bayesnas_l0.01", "--cells=3", "--channels=4", "--epochs=1"))
    data = modes.load_training_data(config)
    model = modes.build_child_network(
        config, registry.resolve_genotype(config.train.genotype),
        data.num_classes, data.image_shape)
    trainers.append(train_lib.Trainer(config, model, data,
                                      tf.distribute.get_strategy()))
  plain, jit = trainers
  for a, b in zip(plain.model.variables, jit.model.variables):
    b.assign(a)
  batch = _first_train_batch(plain.data)
  _close(jit.eval_step(batch), plain.eval_step(batch))
  _close(jit.train_step(batch), plain.train_step(batch))
  for a, b in zip(plain.model.variables, jit.model.variables):
    _close(b, a)


def test_compress_steps_jit_equal_graph(tmp_path):
  from bayesnas_tf.compress import compressor  # pylint: disable=g-import-not-at-top
  from test_compress import _small_cnn  # pylint: disable=g-import-not-at-top
  # A user's model of the digits' 8x8 images (LeNet-5 needs 16x16), its
  # dropout off: XLA draws other random numbers than the plain graph.
  base = _small_cnn()
  base.get_layer("d1").rate = 0.0
  base.save(tmp_path / "base.keras")
  jobs = []
  for jit in (False, True):
    config = _cli_config("compress", tmp_path / str(jit), jit, (
        f"--base_model={tmp_path / 'base.keras'}", "--hessian_batches=1"))
    dataset = data_lib.load_dataset("digits")
    data = data_lib.ArrayTrainingData(
        dataset, data_lib.AugmentConfig(0, False, 0), 64, 32, 1)
    keras.utils.set_random_seed(1)
    jobs.append(compressor.Compressor(config, data, tf.distribute.get_strategy()))
  plain, jit = jobs
  for a, b in zip(plain.model.variables, jit.model.variables):
    b.assign(a)
  batch = _first_train_batch(plain.data)
  steps = []
  for job in jobs:
    variables = job.model.trainable_variables
    optimizer = job._optimizer(variables)  # pylint: disable=protected-access
    steps.append(job._train_step_fn(  # pylint: disable=protected-access
        job.masked_forward, variables, optimizer,
        penalty=lambda job=job: job.prior.penalty(job.group_tensors(), 1e-3)))
  _close(steps[1](batch), steps[0](batch))
  for a, b in zip(plain.model.variables, jit.model.variables):
    _close(b, a)
  expected, got = plain.hessians(0), jit.hessians(0)
  for key, value in expected.items():
    _close(got[key], value, scale=1e2 * float(np.abs(value).max()))
  assert jit.evaluate(jit.masked_forward, "masked") == pytest.approx(
      plain.evaluate(plain.masked_forward, "masked"))


def _supernet(recompute):
  keras.utils.set_random_seed(1)
  net = SuperNet(10, 3, 4, primitives=SUBSET, recompute_cells=recompute)
  net.build((None, 8, 8, 3))
  thin_out(net)
  return net


@pytest.mark.parametrize("jit", [False, True])
def test_recompute_cells_same_gradients_and_statistics(jit):
  x = tf.constant(np.random.RandomState(0).standard_normal((6, 8, 8, 3)),
                  tf.float32)
  y = tf.constant([1, 2, 3, 4, 5, 6])
  results = []
  for recompute in (False, True):
    net = _supernet(recompute)

    @tf.function(jit_compile=jit)
    def step(net=net):
      with tf.GradientTape() as tape:
        logits = net(x, training=True)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
      # The pruned edge's gates are unconnected: None, or 0 when
      # recomputed (recompute.py asks for zeros); compared as 0.
      variables = net.trainable_variables
      return loss, [tf.zeros(v.shape) if g is None else g
                    for v, g in zip(variables, tape.gradient(loss, variables))]

    loss, grads = step()
    results.append((loss, grads, [v.numpy() for v in net.non_trainable_variables]))
  (loss0, grads0, stats0), (loss1, grads1, stats1) = results
  tol = dict(rtol=1e-4, atol=1e-5) if jit else dict(rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(loss1, loss0, **tol)
  for a, b in zip(grads0, grads1):
    np.testing.assert_allclose(b, a, **tol)
  # Moving statistics are updated once, not again by the recomputation.
  for a, b in zip(stats0, stats1):
    np.testing.assert_allclose(b, a, **tol)


def test_recompute_cells_leaves_offsets_and_inference_alone():
  net = _supernet(True)
  x = tf.zeros((2, 8, 8, 3))
  offsets = net.zero_gate_offsets(2)
  with tf.GradientTape() as tape:
    tape.watch(offsets)
    logits = net(x, training=False, gate_offsets=offsets)
  assert all(g is not None for g in tape.gradient(logits, offsets))
  assert net.get_config()["recompute_cells"] is True
