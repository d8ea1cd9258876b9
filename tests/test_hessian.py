"""Gate Hessian estimators against the exact Hessian diagonal (DESIGN.md 6).

The exact oracle (one HVP per gate) is itself checked against float64 central
finite differences before `ggn` and `ggn_mc` are compared with it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag.supernet import SuperNet
from bayesnas_tf.search import hessian

PRIMITIVES = ("sep3", "max", "avg", "id")


def _small_net(dtype="float32", seed=0):
  keras.utils.set_random_seed(seed)
  # Keras caches the global dtype policy, so restore both it and floatx.
  previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx(dtype)
  keras.config.set_dtype_policy(dtype)
  try:
    net = SuperNet(4, 3, 3, primitives=PRIMITIVES)
    net.build((None, 6, 6, 2))
  finally:
    keras.config.set_floatx(previous_floatx)
    keras.config.set_dtype_policy(previous_policy)
  rng = np.random.default_rng(seed)
  images = tf.constant(rng.normal(size=(3, 6, 6, 2)), dtype)
  labels = tf.constant([0, 3, 1])
  net(images, training=True)  # Move the BN statistics away from (0, 1).
  for v in net.arch_variables:  # Gates away from 1 so every term matters.
    v.assign(v + tf.constant(rng.normal(scale=0.3, size=v.shape), v.dtype))
  return net, images, labels


@pytest.fixture(scope="module")
def net32():
  net, images, labels = _small_net()
  exact = tf.function(hessian.exact_diagonal)(net, images, labels)
  return net, images, labels, [e.numpy() for e in exact]


def _loss(net, images, labels):
  logits = net(images, training=False)
  return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits))


def test_exact_oracle_matches_float64_finite_differences():
  net, images, labels = _small_net("float64", seed=1)
  exact = tf.function(hessian.exact_diagonal)(net, images, labels)
  # Traced once: it reads the gate variables' current values at each call.
  loss = tf.function(lambda: _loss(net, images, labels))
  rng = np.random.default_rng(0)
  step = 1e-4
  checked = 0
  for cell_index in range(3):
    cell = net.cells[cell_index]
    for edge_index in rng.choice(len(cell.edges), 2, replace=False):
      edge = cell.edges[edge_index]
      for gate in rng.choice(len(PRIMITIVES) + 1, 2, replace=False):
        variable, index = ((edge.w, int(gate)) if gate < len(PRIMITIVES)
                           else (edge.w_all, None))
        original = variable.numpy().copy()

        def loss_at(delta):
          value = original.copy()
          if index is None:
            value = value + delta
          else:
            value[index] += delta
          variable.assign(value)
          return float(loss())

        center = loss_at(0.0)
        fd = (loss_at(step) - 2 * center + loss_at(-step)) / step**2
        variable.assign(original)
        got = exact[cell_index].numpy()[edge_index, gate]
        assert got == pytest.approx(fd, rel=1e-4, abs=1e-5), (
            cell_index, edge_index, gate)
        checked += 1
  assert checked == 12


def test_ggn_equals_exact(net32):
  net, images, _, exact = net32
  ggn = hessian.ggn_diagonal(net, images)
  for g, e in zip(ggn, exact):
    assert g.shape == e.shape == (8, len(PRIMITIVES) + 1)
    np.testing.assert_allclose(g.numpy(), e, rtol=2e-4, atol=1e-6)
  assert all(float(tf.reduce_min(g)) >= 0 for g in ggn)
  assert max(float(tf.reduce_max(g)) for g in ggn) > 1e-3  # not trivially 0


def test_ggn_mc_is_unbiased(net32):
  net, images, _, exact = net32
  fn = tf.function(lambda seed: hessian.ggn_mc_diagonal(net, images, seed))
  samples = 400
  mean = [np.zeros_like(e) for e in exact]
  for i in range(samples):
    for m, h in zip(mean, fn(tf.constant([i, 11], tf.int64))):
      assert float(tf.reduce_min(h)) >= 0
      m += h.numpy() / samples
  total_error = sum(np.abs(m - e).sum() for m, e in zip(mean, exact))
  total = sum(np.abs(e).sum() for e in exact)
  # Monte Carlo error of 400 samples; a biased estimator (e.g. target-only
  # curvature) is off by far more than this.
  assert total_error / total < 0.12


def test_masked_gates_have_zero_hessian(net32):
  net, images, _, _ = net32
  edge = net.cells[0].edges[2]
  original = edge.mask.numpy().copy()
  try:
    mask = original.copy()
    mask[1] = 0.0
    edge.set_mask(mask)
    ggn = hessian.ggn_diagonal(net, images)
    assert float(ggn[0][2, 1]) == 0.0
    assert float(ggn[0][2, 0]) > 0.0
  finally:
    edge.set_mask(original)


def test_hessian_is_a_batch_sum(net32):
  net, images, _, _ = net32
  whole = hessian.ggn_diagonal(net, images)
  parts = [hessian.ggn_diagonal(net, images[i:i + 1]) for i in range(3)]
  for cell in range(3):
    np.testing.assert_allclose(whole[cell].numpy(),
                               sum(p[cell].numpy() for p in parts), rtol=1e-4,
                               atol=1e-7)


def test_unknown_method():
  with pytest.raises(ValueError, match="unknown Hessian method"):
    hessian.gate_hessian(None, None, None, "diag")
