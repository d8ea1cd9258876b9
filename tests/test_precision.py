"""Dtype policies (precision.py): float32 variables, float32 curvature, loss
scaling and the CLI's refusal of mixed_float16 without a GPU.

Keras's own mixed-precision layer check (`run_layer_test`, which rebuilds a
layer with `dtype="mixed_float16"` and asserts float16 outputs and float32
weights) runs over every registered layer in test_keras_layers.py.
"""

import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import config as config_lib
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.supernet import SuperNet
from bayesnas_tf.runtime import precision
from bayesnas_tf.search import search_loop
from tests.conftest import run_main
from test_jit_recompute import thin_out

SUBSET = ("sep3", "dil3", "max", "avg", "id")


def _tensor(shape, seed=0):
  return tf.constant(np.random.RandomState(seed).standard_normal(shape),
                     tf.float32)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_supernet_under_policy(policy):
  # Every sublayer follows the network's policy; variables stay float32;
  # the gates and the penalty read them in float32 outside the layers.
  net = SuperNet(10, 3, 4, primitives=SUBSET, dtype=policy)
  net.build((None, 8, 8, 3))
  compute = keras.dtype_policies.get(policy).compute_dtype
  logits = net(_tensor((2, 8, 8, 3)), training=True)
  assert logits.dtype == compute
  assert {v.dtype for v in net.variables} == {"float32"}
  layers = [l for cell in net.cells for l in cell._flatten_layers()]
  assert {l.compute_dtype for l in layers} == {compute}
  assert net.gates_by_type()["normal"].dtype == tf.float32


def test_float32_policy_scope_restores_policies():
  net = SuperNet(10, 3, 4, primitives=SUBSET, dtype="mixed_bfloat16")
  net.build((None, 8, 8, 3))
  x = _tensor((2, 8, 8, 3))
  with precision.float32_policy(net):
    assert net(x, training=False).dtype == tf.float32
  assert net(x, training=False).dtype == tf.bfloat16


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")),
                    reason="GPUs run these kernels in bfloat16")
@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_batch_norm_and_depthwise_run_in_float32_on_cpu(stride):
  # TF's CPU kernels for them are slow paths in bfloat16 (batch_norm.py);
  # the op still returns its compute dtype and float32's numbers to
  # bfloat16 precision.
  x = _tensor((2, 8, 8, 4))
  layers = {p: ops.SepConv(4, 5, stride, dtype=p)
            for p in ("float32", "mixed_bfloat16")}
  for layer in layers.values():
    layer.build(x.shape)
  for a, b in zip(layers["float32"].variables,
                  layers["mixed_bfloat16"].variables):
    b.assign(a)
  functions = {p: tf.function(lambda x, op=op: op(x, training=True))
               for p, op in layers.items()}
  outputs = {p: function(x) for p, function in functions.items()}
  graph = functions["mixed_bfloat16"].get_concrete_function(x).graph
  kernels = [o for o in graph.get_operations()
             if o.type in ("DepthwiseConv2dNative", "FusedBatchNormV3")]
  assert len(kernels) == 4
  assert {o.get_attr("T") for o in kernels} == {tf.float32}
  assert outputs["mixed_bfloat16"].dtype == tf.bfloat16
  np.testing.assert_allclose(
      tf.cast(outputs["mixed_bfloat16"], tf.float32).numpy(),
      outputs["float32"].numpy(), rtol=0.05, atol=0.05)


def _search(tmp_path, policy, **runtime):
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset="digits", batch_size=8,
                                 max_train_examples=160, crop_padding=0,
                                 cutout=0),
      supernet=config_lib.SupernetConfig(cells=3, channels=4, primitives=SUBSET),
      runtime=config_lib.RuntimeConfig(model_dir=str(tmp_path / policy),
                                       progress=False, dtype_policy=policy,
                                       **runtime)).validate()
  dataset = data_lib.load_dataset("digits")
  return search_loop.BayesNASSearch(config, dataset, tf.distribute.get_strategy())


def _step_update(search, batch):
  """The change one gate step makes to every variable (flattened)."""
  before = [v.numpy() for v in search.net.trainable_variables]
  ce, _, _ = search.train_step_fn(True)(batch)
  assert np.isfinite(float(ce))
  return np.concatenate([(v.numpy() - b).ravel() for v, b in zip(
      search.net.trainable_variables, before)])


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
  """Searches under each policy from the same (thinned out) float32 start,
  the float32 search's Hessian and the update of its first gate step."""
  root = tmp_path_factory.mktemp("policies")
  built = {p: _search(root, p)
           for p in ("float32", "mixed_bfloat16", "mixed_float16")}
  reference = built["float32"]
  thin_out(reference.net)
  for search in built.values():
    search.net.set_masks(reference.net.masks_by_type())
    for a, b in zip(reference.net.variables, search.net.variables):
      b.assign(a)
  batch = next(b for _, b in reference.phase_batches(search_loop.SEARCH, 0))
  seed = tf.constant([0, 0], tf.int64)
  hessian = [h.numpy() for h in reference.hessian_fn("ggn")(batch, seed)]
  return built, batch, seed, hessian, _step_update(reference, batch)


def test_ggn_hessian_of_mixed_search_equals_float32(searches):
  # The Hessian pass of a mixed search runs the float32 network on the same
  # variables: it agrees with the float32 search's to float32 round-off
  # (rtol 1e-5), although the training step computes in bfloat16.
  built, batch, seed, expected, _ = searches
  got = built["mixed_bfloat16"].hessian_fn("ggn")(batch, seed)
  for e, g in zip(expected, got):
    assert g.dtype == tf.float32
    np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("policy, tolerance", [
    ("mixed_float16", 0.15), ("mixed_bfloat16", 0.3)])
def test_mixed_step_updates_like_float32(searches, policy, tolerance):
  # One gate step from the same variables changes them as float32's step
  # does; float16's loss scale applied the step and kept its scale;
  # variables stay float32. Tolerance (relative error of the whole update):
  # a kernel that feeds a training-mode BN gets its gradient as a difference
  # of nearly equal terms (BN projects out the mean and scale directions),
  # so the error is far above the dtype's epsilon: measured 6.5% (float16)
  # and 13% (bfloat16); the bounds leave 2x. No update at all is 100%.
  built, batch, _, _, expected = searches
  search = built[policy]
  got = _step_update(search, batch)
  error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
  assert error < tolerance, error
  assert {v.dtype for v in search.net.variables} == {"float32"}
  if policy == "mixed_float16":
    assert int(search.loss_scale.finite_steps) == 1
    assert float(search.loss_scale.scale_value) == precision.INITIAL_LOSS_SCALE


def test_loss_scale_skips_overflow_and_grows():
  variable = tf.Variable([1.0, 2.0])
  optimizers = [keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1)]
  other = tf.Variable([3.0])
  for o, v in zip(optimizers, ([variable], [other])):
    o.build(v)
  scale = precision.LossScale(initial_scale=8.0, growth_steps=2)

  @tf.function
  def step(grad):
    return scale.apply([(optimizers[0], [grad * scale.scale_value], [variable]),
                        (optimizers[1], [tf.constant([1.0]) * scale.scale_value],
                         [other])])

  assert not bool(step(tf.constant([np.inf, 1.0])))  # overflow: skip both
  np.testing.assert_allclose(variable.numpy(), [1.0, 2.0])
  np.testing.assert_allclose(other.numpy(), [3.0])
  assert float(scale.scale_value) == 4.0
  assert bool(step(tf.constant([1.0, 1.0])))          # unscaled: grad 1
  np.testing.assert_allclose(variable.numpy(), [0.9, 1.9], rtol=1e-6)
  np.testing.assert_allclose(other.numpy(), [2.9], rtol=1e-6)
  step(tf.constant([1.0, 1.0]))
  assert float(scale.scale_value) == 8.0               # 2 finite steps: x2


def test_loss_scale_gradient_after_the_tape():
  # The scaled loss's gradient, taken after the tape's block (as every
  # step does); a product written there would not be recorded.
  variable = tf.Variable([1.0, -2.0])
  scale = precision.LossScale(initial_scale=64.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(variable))
  grads = scale.gradient(tape, loss, [variable])
  np.testing.assert_allclose(grads[0].numpy(), [128.0, -256.0])


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")),
                    reason="the refusal is for machines without a GPU")
def test_cli_refuses_mixed_float16_without_gpu():
  with tempfile.TemporaryDirectory() as model_dir:
    result = run_main("--mode=search", "--dataset=digits",
                      f"--model_dir={model_dir}", "--dtype_policy=mixed_float16",
                      timeout=120)
  assert result.returncode != 0
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "mixed_float16 needs a GPU" in lines[0], result.stderr
