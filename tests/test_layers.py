"""Tests of the layers MixedOp, SwitchedEdge, ChannelReduce and BayesCell.

Each layer goes through `testing.run_layer_test` (config round trips, exact
weight/parameter counts, eager == tf.function, gradients for every variable);
the numerics are checked against sums computed from the sublayers directly.
"""

import contextlib
import warnings

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag import space as search_space
from bayesnas_tf import testing
from bayesnas_tf.layers import MixedOp
from bayesnas_tf.layers import SwitchedEdge
from bayesnas_tf.spaces.dag.bayes_cell import BayesCell
from bayesnas_tf.spaces.dag.channel_reduce import ChannelReduce

SUBSET = ("sep3", "max", "id")  # a cheap primitive subset, in gate order


# --- exact counts (ALGORITHM.md 1.1, 1.3) -------------------------------------
def op_params(name, c, stride):
  return {"sep3": 2 * c * c + 22 * c, "sep5": 2 * c * c + 54 * c,
          "dil3": 10 * c * c + 2 * c, "dil5": 26 * c * c + 2 * c,
          "max": 0, "avg": 0,
          "id": 0 if stride == 1 else c * c + 2 * c}[name]


def op_weights(name, stride):
  return {"sep3": 8, "sep5": 8, "dil3": 4, "dil5": 4, "max": 0, "avg": 0,
          "id": 0 if stride == 1 else 3}[name]


def mixed_params(c, stride, primitives=ops.PRIMITIVES):
  return sum(op_params(n, c, stride) for n in primitives)


def mixed_weights(stride, primitives=ops.PRIMITIVES):
  return sum(op_weights(n, stride) for n in primitives)


def edge_params(c, stride, primitives=ops.PRIMITIVES):
  return mixed_params(c, stride, primitives) + len(primitives) + 1  # w, w_all


def creduct_params(c_in, c_out, size_reduct):
  extra = 0 if size_reduct == "none" else c_in * c_in
  return 2 * c_in + c_in * c_out + extra  # BN(c_in) + 1x1, [+ size reduction]


def creduct_weights(size_reduct):
  return 3 + {"none": 0, "conv": 1, "factorized": 2}[size_reduct]


def test_paper_edge_count():
  # One searched edge at C = 36: 7 ops + 8 gates.
  assert edge_params(36, 1) == 3384 + 4536 + 13032 + 33768 + 8


# --- helpers ------------------------------------------------------------------
def random_tensor(shape, seed=0):
  return tf.constant(
      np.random.RandomState(seed).standard_normal(shape).astype("float32"))


def set_gates(edge, seed=0):
  rng = np.random.RandomState(seed)
  w = rng.uniform(0.5, 2.0, edge.num_ops).astype("float32")
  w_all = np.float32(rng.uniform(0.5, 2.0))
  edge.w.assign(w)
  edge.w_all.assign(w_all)
  return w, w_all


def edge_reference(edge, x, w, w_all, ops_to_sum=None):
  """sum_o w_o op_o(w_all x), computed from the MixedOp's sublayers."""
  if ops_to_sum is None:
    ops_to_sum = range(edge.num_ops)
  total = 0.0
  for o in ops_to_sum:
    op = edge.mixed_op.candidate_ops[o]
    total = total + w[o] * op(x * w_all, training=False).numpy()
  return total


@contextlib.contextmanager
def count_calls(layers):
  """Counts `call`s of each layer (keyed by layer name) while active."""
  counts = {layer.name: 0 for layer in layers}
  originals = {}
  for layer in layers:
    original = layer.call
    originals[layer.name] = original

    def wrapper(*args, __original=original, __name=layer.name, **kwargs):
      counts[__name] += 1
      return __original(*args, **kwargs)

    layer.call = wrapper
  try:
    yield counts
  finally:
    for layer in layers:
      del layer.call  # back to the class method
      assert layer.call.__func__ is type(layer).call


# --- MixedOp ------------------------------------------------------------------
@pytest.mark.parametrize("primitives", (ops.PRIMITIVES, SUBSET))
@pytest.mark.parametrize("stride", (1, 2))
def test_mixed_op_layer(stride, primitives):
  c = 4
  weights = tf.constant(np.linspace(0.5, 1.5, len(primitives)), tf.float32)
  layer = testing.run_layer_test(
      MixedOp, {"channels": c, "stride": stride, "primitives": primitives},
      input_shape=(2, 8, 8, c),
      expected_output_shape=(2, 8 // stride, 8 // stride, c),
      expected_num_trainable_weights=mixed_weights(stride, primitives),
      expected_num_trainable_params=mixed_params(c, stride, primitives),
      call_kwargs={"weights": weights})
  assert [op.name for op in layer.candidate_ops] == list(primitives)


def test_mixed_op_is_weighted_sum_of_its_ops():
  layer = MixedOp(4, 1, name="mixed_op_e3")
  x = random_tensor((2, 7, 7, 4))
  weights = np.random.RandomState(1).uniform(-1, 1, 7).astype("float32")
  y = layer(x, weights=tf.constant(weights)).numpy()
  expected = sum(w * op(x).numpy()
                 for w, op in zip(weights, layer.candidate_ops))
  np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
  # Only the listed ops are computed, and the others are not called.
  with count_calls(layer.candidate_ops) as counts:
    y = layer(x, weights=tf.constant(weights), active=(0, 4)).numpy()
  assert counts == {"sep3": 1, "sep5": 0, "dil3": 0, "dil5": 0, "max": 1,
                    "avg": 0, "id": 0}
  expected = sum(weights[o] * layer.candidate_ops[o](x).numpy() for o in (0, 4))
  np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
  # No active op: zeros of the output shape.
  y = layer(x, weights=tf.constant(weights), active=())
  np.testing.assert_array_equal(y.numpy(), np.zeros((2, 7, 7, 4)))


def test_mixed_op_per_example_weights():
  layer = MixedOp(4, 2, SUBSET)
  x = random_tensor((2, 8, 8, 4))
  weights = np.array([[1.0, -0.5, 2.0], [0.25, 3.0, -1.0]], np.float32)
  y = layer(x, weights=tf.constant(weights)).numpy()
  for b in range(2):
    expected = sum(weights[b, o] * op(x[b:b + 1]).numpy()
                   for o, op in enumerate(layer.candidate_ops))
    np.testing.assert_allclose(y[b:b + 1], expected, atol=1e-5, rtol=1e-5)


def test_mixed_op_rejects_unknown_primitive():
  with pytest.raises(ValueError, match="valid primitives are"):
    MixedOp(4, 1, ("sep3", "conv7"))


# --- SwitchedEdge -------------------------------------------------------------
@pytest.mark.parametrize("primitives", (ops.PRIMITIVES, SUBSET))
@pytest.mark.parametrize("stride", (1, 2))
def test_switched_edge_layer(stride, primitives):
  c = 4
  out = (7 - 1) // stride + 1
  # mask + the BN moving statistics (2 per BN: sep 2 BNs, dil 1, reduce 1).
  moving = sum({"sep3": 4, "sep5": 4, "dil3": 2, "dil5": 2}.get(n, 0)
               for n in primitives) + (2 if stride == 2 and "id" in primitives
                                       else 0)
  testing.run_layer_test(
      SwitchedEdge, {"channels": c, "stride": stride,
                     "primitives": primitives},
      input_shape=(2, 7, 7, c),
      expected_output_shape=(2, out, out, c),
      expected_num_trainable_weights=mixed_weights(stride, primitives) + 2,
      expected_num_trainable_params=edge_params(c, stride, primitives),
      expected_num_non_trainable_weights=1 + moving)


def test_switched_edge_gate_variables():
  edge = SwitchedEdge(4, 1)
  edge.build((None, 8, 8, 4))
  assert edge.num_ops == 7
  assert tuple(edge.w.shape) == (7,)
  assert tuple(edge.w_all.shape) == ()
  assert tuple(edge.mask.shape) == (8,)
  np.testing.assert_array_equal(edge.w.numpy(), np.ones(7))
  assert float(edge.w_all.numpy()) == 1.0
  np.testing.assert_array_equal(edge.mask.numpy(), np.ones(8))
  assert edge.w.trainable and edge.w_all.trainable
  assert not edge.mask.trainable
  assert edge.mask.path in [v.path for v in edge.non_trainable_weights]
  assert edge.gate_variables == [edge.w, edge.w_all]
  assert edge.w.path.endswith("/w") and edge.w_all.path.endswith("/w_all")
  np.testing.assert_array_equal(edge.gates().numpy(), np.ones(8))


@pytest.mark.parametrize("stride", (1, 2))
def test_switched_edge_output_is_gated_sum(stride):
  edge = SwitchedEdge(4, stride)
  x = random_tensor((2, 7, 7, 4))
  edge(x)  # build
  w, w_all = set_gates(edge)
  y = edge(x).numpy()
  np.testing.assert_allclose(y, edge_reference(edge, x, w, w_all),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(edge.gates().numpy(), np.append(w, w_all))


def test_switched_edge_mask_removes_op():
  edge = SwitchedEdge(4, 1)
  x = random_tensor((2, 8, 8, 4))
  edge(x)
  w, w_all = set_gates(edge, seed=1)
  mask = np.ones(8, np.float32)
  mask[[2, 5]] = 0.0  # prune dil3 and avg
  edge.set_mask(mask)
  assert edge.active_ops == (0, 1, 3, 4, 6)
  with count_calls(edge.mixed_op.candidate_ops) as counts:
    y = edge(x).numpy()
  assert counts["dil3"] == 0 and counts["avg"] == 0, counts
  assert all(counts[n] == 1 for n in ("sep3", "sep5", "dil5", "max", "id"))
  np.testing.assert_allclose(
      y, edge_reference(edge, x, w, w_all, (0, 1, 3, 4, 6)),
      atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(edge.gates().numpy(),
                             np.append(w, w_all) * mask)
  # The pruned op is left out of traced graphs too.
  with count_calls(edge.mixed_op.candidate_ops) as counts:
    y_graph = tf.function(lambda t: edge(t))(x).numpy()
  assert counts["dil3"] == 0 and counts["avg"] == 0, counts
  np.testing.assert_allclose(y_graph, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", (1, 2))
def test_switched_edge_pruned_edge_gate_gives_zeros(stride):
  edge = SwitchedEdge(4, stride)
  x = random_tensor((3, 7, 7, 4))
  edge(x)
  mask = np.ones(8, np.float32)
  mask[-1] = 0.0
  edge.set_mask(mask)
  assert edge.active_ops == ()
  with count_calls(edge.mixed_op.candidate_ops) as counts:
    y = edge(x)
    y_graph = tf.function(lambda t: edge(t))(x)
    y_offsets = edge(x, gate_offsets=tf.ones((3, 8)))
  assert sum(counts.values()) == 0, counts
  out = 7 if stride == 1 else 4
  for value in (y, y_graph, y_offsets):
    assert tuple(value.shape) == (3, out, out, 4)
    assert value.dtype == tf.float32
    np.testing.assert_array_equal(value.numpy(), 0.0)
  assert tuple(edge.compute_output_shape((3, 7, 7, 4))) == (3, out, out, 4)


def test_switched_edge_per_example_gate_offsets():
  edge = SwitchedEdge(4, 2)
  x = random_tensor((2, 8, 8, 4))
  edge(x)
  w, w_all = set_gates(edge, seed=2)
  offsets = np.random.RandomState(3).uniform(-0.5, 0.5, (2, 8)).astype(
      "float32")
  y = edge(x, gate_offsets=tf.constant(offsets)).numpy()
  for b in range(2):
    expected = edge_reference(edge, x[b:b + 1], w + offsets[b, :-1],
                              w_all + offsets[b, -1])
    np.testing.assert_allclose(y[b:b + 1], expected, atol=1e-5, rtol=1e-5)
  # The two examples really used different gates.
  same = edge_reference(edge, x[1:2], w + offsets[0, :-1],
                        w_all + offsets[0, -1])
  assert not np.allclose(y[1:2], same, atol=1e-4)
  # Zero offsets change nothing.
  np.testing.assert_allclose(edge(x, gate_offsets=tf.zeros((2, 8))).numpy(),
                             edge(x).numpy(), atol=1e-6)
  # A masked gate stays off whatever its offset.
  mask = np.ones(8, np.float32)
  mask[0] = 0.0
  edge.set_mask(mask)
  y = edge(x, gate_offsets=tf.constant(offsets)).numpy()
  for b in range(2):
    expected = edge_reference(edge, x[b:b + 1], w + offsets[b, :-1],
                              w_all + offsets[b, -1], ops_to_sum=range(1, 7))
    np.testing.assert_allclose(y[b:b + 1], expected, atol=1e-5, rtol=1e-5)


def test_switched_edge_gate_offset_gradients_are_per_example():
  # d out_b / d offset_b,o = d out_b / d w_o; the other example's offsets
  # have no effect on out_b.
  edge = SwitchedEdge(4, 1, SUBSET)
  x = random_tensor((2, 6, 6, 4))
  edge(x)
  offsets = tf.zeros((2, 4))
  with tf.GradientTape() as tape:
    tape.watch(offsets)
    y = edge(x, gate_offsets=offsets)
    loss0 = tf.reduce_sum(y[0] ** 2)
  grad = tape.gradient(loss0, offsets).numpy()
  np.testing.assert_array_equal(grad[1], 0.0)
  with tf.GradientTape() as tape:
    loss_w = tf.reduce_sum(edge(x[:1]) ** 2)
  g_w, g_all = tape.gradient(loss_w, [edge.w, edge.w_all])
  np.testing.assert_allclose(grad[0], np.append(g_w.numpy(), g_all.numpy()),
                             rtol=1e-4, atol=1e-4)


def test_switched_edge_set_mask_and_sync_round_trip():
  edge = SwitchedEdge(4, 1)
  edge.build((None, 8, 8, 4))
  assert edge.active_ops == tuple(range(7))
  mask = np.array([1, 0, 1, 1, 0, 1, 1, 1], np.float32)
  edge.set_mask(mask)
  np.testing.assert_array_equal(edge.mask.numpy(), mask)
  assert edge.active_ops == (0, 2, 3, 5, 6)
  # As after a checkpoint restore: the variable changes, then a sync.
  other = np.array([0, 1, 0, 1, 1, 1, 1, 1], np.float32)
  edge.mask.assign(other)
  assert edge.active_ops == (0, 2, 3, 5, 6)  # Python state, not yet synced
  edge.sync_active_ops()
  assert edge.active_ops == (1, 3, 4, 5, 6)
  edge.mask.assign(np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32))
  edge.sync_active_ops()
  assert edge.active_ops == ()
  edge.set_mask(np.ones(8))
  assert edge.active_ops == tuple(range(7))
  with pytest.raises(ValueError):
    edge.set_mask(np.ones(7))


# --- ChannelReduce ------------------------------------------------------------
@pytest.mark.parametrize("size", (8, 7))
@pytest.mark.parametrize("size_reduct", ("none", "conv", "factorized"))
def test_channel_reduce_layer(size_reduct, size):
  c_in, c_out = 6, 4
  out = size if size_reduct == "none" else (size + 1) // 2
  testing.run_layer_test(
      ChannelReduce, {"channels": c_out, "size_reduct": size_reduct},
      input_shape=(2, size, size, c_in),
      expected_output_shape=(2, out, out, c_out),
      expected_num_trainable_weights=creduct_weights(size_reduct),
      expected_num_trainable_params=creduct_params(c_in, c_out, size_reduct))


def test_channel_reduce_paper_sizes():
  # reduct_7 of ALGORITHM.md 1.4: CReduct(144 -> 72, size_reduct).
  for size_reduct in ("conv", "factorized"):
    layer = ChannelReduce(72, size_reduct)
    layer.build((None, 32, 32, 144))
    assert testing.num_params(layer.trainable_weights) == (
        144 * 144 + 2 * 144 + 144 * 72)


def test_channel_reduce_factorized_needs_even_channels():
  layer = ChannelReduce(4, "factorized")
  with pytest.raises(ValueError, match="even number of input channels"):
    layer.build((None, 8, 8, 5))


def test_channel_reduce_validation():
  with pytest.raises(ValueError, match="Received: channels=0"):
    ChannelReduce(0)
  with pytest.raises(ValueError, match="size_reduct"):
    ChannelReduce(4, "pool")


def _weights_by_name(layer):
  return {v.path[len(layer.name) + 1:]: v.numpy().astype("float64")
          for v in layer.weights}


@pytest.mark.parametrize("size", (8, 7))
def test_channel_reduce_factorized_numerics(size):
  layer = ChannelReduce(3, "factorized", name="creduct")
  layer.build((None, size, size, 4))
  rng = np.random.RandomState(0)
  for v in layer.weights:
    low = 0.5 if "variance" in v.path or "gamma" in v.path else -1.0
    v.assign(rng.uniform(low, 1.5, v.shape).astype("float32"))
  w = _weights_by_name(layer)
  x = rng.standard_normal((2, size, size, 4))
  y = layer(tf.constant(x, tf.float32)).numpy()
  # DARTS's FactorizedReduce: conv1 on even pixels, conv2 on odd pixels (a
  # missing last odd pixel of an odd size reads a zero).
  padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  half1 = x[:, ::2, ::2] @ w["size_reduct1/kernel"][0, 0]
  half2 = padded[:, 1::2, 1::2][:, :half1.shape[1], :half1.shape[2]] @ (
      w["size_reduct2/kernel"][0, 0])
  z = np.concatenate([half1, half2], axis=-1)
  z = ((z - w["bn/moving_mean"]) / np.sqrt(w["bn/moving_variance"] + 1e-5)
       * w["bn/gamma"] + w["bn/beta"])
  expected = np.maximum(z, 0) @ w["conv/kernel"][0, 0]
  np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)


# --- BayesCell ----------------------------------------------------------------
def cell_case(space, cell_type, reduction_prev, primitives=ops.PRIMITIVES,
              size_reduct="conv"):
  spec = space.cell(cell_type)
  c, c0, c1, size = 4, 6, 6 if size_reduct == "factorized" else 5, 8
  reduction = cell_type == "reduce"
  in1_size = 2 * size if reduction_prev else size
  out = size // 2 if reduction else size
  params = creduct_params(c0, c, "none") + creduct_params(
      c1, c, size_reduct if reduction_prev else "none")
  weights = creduct_weights("none") + creduct_weights(
      size_reduct if reduction_prev else "none")
  for src, _ in spec.edges:
    stride = 2 if reduction and search_space.is_cell_input(src) else 1
    params += edge_params(c, stride, primitives)
    weights += mixed_weights(stride, primitives) + 2
  return dict(
      init_kwargs={"cell_spec": spec, "channels": c, "reduction": reduction,
                   "reduction_prev": reduction_prev,
                   "primitives": primitives, "size_reduct": size_reduct},
      input_shape=((2, size, size, c0), (2, in1_size, in1_size, c1)),
      expected_output_shape=(2, out, out, spec.num_nodes * c),
      expected_num_trainable_weights=weights,
      expected_num_trainable_params=params)


CELL_CASES = [
    pytest.param(search_space.BAYESNAS_SPACE, t, rp, ops.PRIMITIVES, "conv",
                 id=f"bayesnas-{t}-{'rp' if rp else 'norp'}")
    for t in ("normal", "reduce") for rp in (False, True)
] + [
    # The 14-edge DARTS cells are slow to build with all 7 ops: use a subset.
    pytest.param(search_space.DARTS_SPACE, t, rp, SUBSET, "conv",
                 id=f"darts-{t}-{'rp' if rp else 'norp'}")
    for t in ("normal", "reduce") for rp in (False, True)
] + [
    pytest.param(search_space.BAYESNAS_SPACE, "normal", True, SUBSET,
                 "factorized", id="bayesnas-normal-rp-factorized"),
]


@pytest.mark.parametrize("space,cell_type,reduction_prev,primitives,"
                         "size_reduct", CELL_CASES)
def test_bayes_cell_layer(space, cell_type, reduction_prev, primitives,
                          size_reduct):
  case = cell_case(space, cell_type, reduction_prev, primitives, size_reduct)
  # The config holds the spec as a dict; from_config must rebuild it.
  kwargs = dict(case.pop("init_kwargs"))
  layer = testing.run_layer_test(BayesCell, kwargs, **case)
  spec = space.cell(cell_type)
  assert layer.num_edges == len(spec.edges)
  assert layer.cell_spec == spec
  for edge, (src, dst) in zip(layer.edges, spec.edges):
    reduction = cell_type == "reduce"
    expected = 2 if reduction and search_space.is_cell_input(src) else 1
    assert edge.stride == expected, (edge.name, edge.stride)
    assert edge.name == f"edge_{src}_{dst}"
    assert edge.primitives == tuple(primitives)


def test_bayes_cell_edge_counts_and_strides():
  normal = BayesCell(search_space.BAYESNAS_SPACE.normal, 4)
  reduce = BayesCell(search_space.BAYESNAS_SPACE.reduce, 4, reduction=True)
  darts = BayesCell(search_space.DARTS_SPACE.reduce, 4, reduction=True,
                    primitives=SUBSET)
  assert normal.num_edges == reduce.num_edges == 8
  assert darts.num_edges == 14
  assert [e.stride for e in normal.edges] == [1] * 8
  # in0_0, in1_0, in1_1, sel_0_1, in1_2, sel_0_2, in1_3, sel_0_3.
  assert [e.stride for e in reduce.edges] == [2, 2, 2, 1, 2, 1, 2, 1]
  for edge, (src, _) in zip(darts.edges, search_space.DARTS_SPACE.reduce.edges):
    assert edge.stride == (2 if src in ("in0", "in1") else 1)
  assert [e.stride for e in darts.edges].count(2) == 8  # 2 inputs x 4 nodes


@pytest.mark.parametrize("cell_type", ("normal", "reduce"))
def test_bayes_cell_wiring(cell_type):
  # out = concat(n0..n3), n_j = sum of the edges into n_j, each edge fed by its
  # source; in particular in1 -> n3 reads in1 (ALGORITHM.md 1.2, not the
  # official forward's in0).
  spec = search_space.BAYESNAS_SPACE.cell(cell_type)
  cell = BayesCell(spec, 3, reduction=cell_type == "reduce",
                   primitives=SUBSET)
  in0, in1 = random_tensor((2, 8, 8, 5), 0), random_tensor((2, 8, 8, 4), 1)
  cell(in0, in1)  # build
  for i, edge in enumerate(cell.edges):  # distinct gates per edge
    edge.w.assign(np.float32([1.0 + i, 0.5, -0.25 * i]))
    edge.w_all.assign(np.float32(1.0 + 0.1 * i))
  y = cell(in0, in1).numpy()
  states = {"in0": cell.preprocess0(in0).numpy(),
            "in1": cell.preprocess1(in1).numpy()}
  for node in spec.nodes:
    total = 0.0
    for index in spec.edges_into(node):
      edge = cell.edges[index]
      src = spec.edges[index][0]
      total = total + edge_reference(
          edge, tf.constant(states[src]), edge.w.numpy(),
          edge.w_all.numpy())
    states[node] = total
  expected = np.concatenate([states[n] for n in spec.nodes], axis=-1)
  np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)
  # Zero per-example offsets (batch, num_edges, num_ops + 1) change nothing.
  y_off = cell(in0, in1, gate_offsets=tf.zeros((2, 8, 4))).numpy()
  np.testing.assert_allclose(y_off, y, atol=1e-5)
  assert tuple(cell.gates().shape) == (8, 4)
  assert len(cell.gate_variables) == 16


def test_bayes_cell_rejects_mismatched_inputs():
  cell = BayesCell(search_space.BAYESNAS_SPACE.normal, 4, primitives=SUBSET)
  with pytest.raises(ValueError, match="same spatial size"):
    cell.build((None, 8, 8, 4), (None, 16, 16, 4))


def test_bayes_cell_config_round_trip_keeps_spec():
  cell = BayesCell(search_space.DARTS_SPACE.normal, 4, reduction=False,
                   reduction_prev=True, primitives=SUBSET,
                   size_reduct="factorized", name="cell_3_normal")
  config = cell.get_config()
  assert config["cell_spec"] == {
      "num_nodes": 4,
      "edges": [list(e) for e in search_space.DARTS_SPACE.normal.edges]}
  revived = BayesCell.from_config(config)
  assert revived.cell_spec == search_space.DARTS_SPACE.normal
  assert revived.primitives == SUBSET
  assert revived.size_reduct == "factorized" and revived.reduction_prev
  assert revived.name == "cell_3_normal"


# --- regressions of fixed bugs -------------------------------------------------
def test_set_mask_emits_no_numpy_deprecation_warning():
  edge = SwitchedEdge(2, 1, ("max",))
  edge.build((None, 4, 4, 2))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    edge.set_mask(np.array([1.0, 1.0]))
  assert edge.active_ops == (0,)


def test_reduction_cell_node_edges_built_at_node_resolution():
  cell = BayesCell(search_space.BAYESNAS_SPACE.reduce, 2, reduction=True,
                   primitives=("max",))
  cell.build((None, 8, 8, 3), (None, 8, 8, 3))
  for edge, (src, _) in zip(cell.edges, cell.cell_spec.edges):
    if not search_space.is_cell_input(src):
      assert tuple(edge.get_build_config()["input_shape"]) == (None, 4, 4, 2)
