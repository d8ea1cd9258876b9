"""Tests of the search supernet (ALGORITHM.md 1.4, 9.2 items 13-14).

The paper-size net (8 cells, C = 36, 26.9M parameters) is built once per
module; the gradient, mask and config tests use a 3-cell C = 4 net on 8x8x1.
"""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf import testing
from bayesnas_tf.spaces.dag.supernet import SuperNet

SUBSET = ("sep3", "max", "id")


@pytest.fixture(scope="module")
def paper_net():
  net = SuperNet(10, 8, 36)
  net.build((None, 32, 32, 3))
  return net


@pytest.fixture(scope="module")
def small_net():
  net = SuperNet(10, 3, 4)
  net.build((None, 8, 8, 1))
  return net


def ids(variables):
  return [id(v) for v in variables]


# --- paper configuration ------------------------------------------------------
def test_paper_parameter_count(paper_net):
  # ALGORITHM.md 1.4 / 9.2 item 13, checked against the official PyTorch net.
  assert testing.num_params(paper_net.trainable_weights) == 26_911_350
  assert paper_net.num_gates == 512  # 8 cells x 8 edges x (7 ops + w_all)
  assert testing.num_params(paper_net.arch_variables) == 512
  assert len(paper_net.arch_variables) == 8 * 8 * 2  # w and w_all per edge


def test_paper_cell_layout(paper_net):
  assert paper_net.cell_types == [
      "normal", "normal", "reduce", "normal", "normal", "reduce", "normal",
      "normal"]
  assert [c.channels for c in paper_net.cells] == [36, 36, 72, 72, 72, 144,
                                                   144, 144]
  assert [c.reduction_prev for c in paper_net.cells] == [
      False, False, False, True, False, False, True, False]
  assert all(c.num_edges == 8 for c in paper_net.cells)


def test_paper_variable_partition(paper_net):
  arch = ids(paper_net.arch_variables)
  weights = ids(paper_net.weight_variables)
  trainable = ids(paper_net.trainable_variables)
  assert len(set(arch)) == len(arch)
  assert len(set(weights)) == len(weights)
  assert not set(arch) & set(weights), "a variable is both gate and weight"
  assert set(arch) | set(weights) == set(trainable)
  assert len(arch) + len(weights) == len(trainable)
  for v in paper_net.arch_variables:
    assert v.trainable
    assert v.path.endswith("/w") or v.path.endswith("/w_all"), v.path
  for v in paper_net.weight_variables:
    assert not (v.path.endswith("/w") or v.path.endswith("/w_all")), v.path
  masks = [v for v in paper_net.non_trainable_variables
           if v.path.endswith("/mask")]
  assert len(masks) == 64
  assert not set(ids(masks)) & set(trainable)


def test_paper_cell_output_shapes(paper_net):
  # ALGORITHM.md 9.2 item 14: N0, N1, R0, N2, N3, R1, N4, N5.
  stem = (None, 32, 32, 108)
  prev_prev, prev = stem, stem
  shapes = []
  for cell in paper_net.cells:
    prev_prev, prev = prev, tuple(cell.compute_output_shape(prev, prev_prev))
    shapes.append(prev)
  assert [f"{s[-1]}@{s[1]}" for s in shapes] == [
      "144@32", "144@32", "288@16", "288@16", "288@16", "576@8", "576@8",
      "576@8"]
  assert all(s[1] == s[2] for s in shapes)


def test_paper_logits_shape(paper_net):
  x = tf.random.normal((1, 32, 32, 3), seed=0)
  logits = paper_net(x, training=False)
  assert tuple(logits.shape) == (1, 10)
  assert logits.dtype == tf.float32
  assert bool(tf.reduce_all(tf.math.is_finite(logits)))


# --- small net ----------------------------------------------------------------
def test_small_net_every_variable_gets_a_gradient(small_net):
  x = tf.random.normal((4, 8, 8, 1), seed=1)
  labels = tf.constant([0, 3, 7, 9])
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  variables = small_net.trainable_variables
  with tf.GradientTape() as tape:
    logits = small_net(x, training=True)
    loss = loss_fn(labels, logits)
  assert tuple(logits.shape) == (4, 10)
  grads = tape.gradient(loss, variables)
  for v, g in zip(variables, grads):
    assert g is not None, f"No gradient for {v.path}"
    assert bool(tf.reduce_all(tf.math.is_finite(g))), (
        f"non-finite gradient for {v.path}")
  gate_ids = set(ids(small_net.arch_variables))
  gate_grads = [g for v, g in zip(variables, grads) if id(v) in gate_ids]
  assert len(gate_grads) == len(small_net.arch_variables) == 3 * 8 * 2
  assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in gate_grads)


def test_small_net_gates_by_type(small_net):
  # 3 cells: reductions at 3 // 3 = 1 and 2 * 3 // 3 = 2 -> N R R.
  assert small_net.cell_types == ["normal", "reduce", "reduce"]
  gates = small_net.gates_by_type()
  assert set(gates) == {"normal", "reduce"}
  assert tuple(gates["normal"].shape) == (1, 8, 8)
  assert tuple(gates["reduce"].shape) == (2, 8, 8)
  np.testing.assert_array_equal(gates["normal"].numpy(), 1.0)
  assert small_net.num_gates == 3 * 8 * 8
  assert small_net.present_cell_types == ["normal", "reduce"]


def test_small_net_masks_round_trip(small_net):
  x = tf.random.normal((2, 8, 8, 1), seed=2)
  before = small_net(x).numpy()
  masks = small_net.masks_by_type()
  assert set(masks) == {"normal", "reduce"}
  for mask in masks.values():
    assert mask.shape == (8, 8)
    np.testing.assert_array_equal(mask, 1.0)
  rng = np.random.RandomState(0)
  new = {t: (rng.uniform(size=(8, 8)) > 0.4).astype("float32")
         for t in ("normal", "reduce")}
  new["normal"][0] = 1.0
  new["normal"][1, -1] = 0.0  # edge in1->n0 of the normal cell pruned
  try:
    small_net.set_masks(new)
    got = small_net.masks_by_type()
    for t in new:
      np.testing.assert_array_equal(got[t], new[t])
      for cell in small_net.cells_of_type(t):
        for edge, edge_mask in zip(cell.edges, new[t]):
          np.testing.assert_array_equal(edge.mask.numpy(), edge_mask)
          expected = (tuple(np.flatnonzero(edge_mask[:-1]))
                      if edge_mask[-1] else ())
          assert edge.active_ops == expected
    gates = small_net.gates_by_type()
    np.testing.assert_array_equal(gates["reduce"].numpy(),
                                  np.stack([new["reduce"]] * 2))
    after = small_net(x).numpy()
    assert after.shape == (2, 10) and np.all(np.isfinite(after))
    assert not np.allclose(after, before)
  finally:
    small_net.set_masks({t: np.ones((8, 8), "float32")
                         for t in ("normal", "reduce")})
  np.testing.assert_allclose(small_net(x).numpy(), before, atol=1e-5)


def test_small_net_zero_gate_offsets(small_net):
  x = tf.random.normal((2, 8, 8, 1), seed=3)
  offsets = small_net.zero_gate_offsets(2)
  assert [tuple(o.shape) for o in offsets] == [(2, 8, 8)] * 3
  np.testing.assert_allclose(
      small_net(x, gate_offsets=offsets).numpy(), small_net(x).numpy(),
      atol=1e-5)


def test_small_net_config_round_trip(small_net):
  config = small_net.get_config()
  assert config["cells"] == 3 and config["channels"] == 4
  assert config["search_space"] == "bayesnas"
  json.dumps(config)  # JSON-able
  revived = SuperNet.from_config(config)
  assert json.dumps(revived.get_config(), sort_keys=True) == json.dumps(
      config, sort_keys=True)
  revived.build((None, 8, 8, 1))
  assert testing.num_params(revived.trainable_weights) == testing.num_params(
      small_net.trainable_weights)
  assert revived.num_gates == small_net.num_gates
  assert [c.name for c in revived.cells] == [c.name for c in small_net.cells]
  serialized = json.loads(json.dumps(
      keras.saving.serialize_keras_object(small_net)))
  assert serialized["registered_name"] == "bayesnas_tf>SuperNet"


def test_darts_search_space_net():
  net = SuperNet(10, 3, 4, search_space="darts", primitives=SUBSET)
  net.build((None, 8, 8, 1))
  assert [c.num_edges for c in net.cells] == [14, 14, 14]
  assert net.num_gates == 3 * 14 * (len(SUBSET) + 1)
  gates = net.gates_by_type()
  assert tuple(gates["reduce"].shape) == (2, 14, 4)
  logits = net(tf.random.normal((2, 8, 8, 1), seed=4))
  assert tuple(logits.shape) == (2, 10)


def test_supernet_validation():
  with pytest.raises(ValueError, match="Received: channels=0"):
    SuperNet(10, 8, 0)
  with pytest.raises(ValueError, match="num_classes"):
    SuperNet(1, 8, 4)
  with pytest.raises(ValueError, match="valid primitives are"):
    SuperNet(10, 3, 4, primitives=("sep3", "zero"))
  with pytest.raises(ValueError, match="valid search spaces are"):
    SuperNet(10, 3, 4, search_space="nasnet")
  with pytest.raises(ValueError, match="at least 3 cells"):
    SuperNet(10, 2, 4)


def test_primitive_subset_changes_gate_count():
  net = SuperNet(10, 3, 2, primitives=("max", "id"))
  net.build((None, 8, 8, 1))
  assert net.num_gates == 3 * 8 * 3
  assert tuple(net.gates_by_type()["normal"].shape) == (1, 8, 3)
  assert ops.check_primitives(net.primitives) == ("max", "id")


def test_masks_by_type_emits_no_numpy_deprecation_warning(small_net):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    masks = small_net.masks_by_type()
  assert set(masks) == {"normal", "reduce"}
