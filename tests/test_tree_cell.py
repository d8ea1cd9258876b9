"""Tree cells (PROXYLESS.md 1, 3.3): ops, layers, the tree dependency of the
prior, derivation, and the gate Hessians of a tree supernet."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import testing
from bayesnas_tf.spaces.tree import ops as tree_ops
from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.spaces.tree.tree_cell import TreeCell, TreeEdge
from bayesnas_tf.config import PRUNE_THRESHOLD
from bayesnas_tf.search import hessian as hessian_lib
from bayesnas_tf.search import prior as prior_lib
from bayesnas_tf.spaces.tree.derive import derive_cell
from bayesnas_tf.spaces.tree.genotype import cell_params
from bayesnas_tf.spaces.tree.space import TREE_SPACES, TREECELL_A, TreeBranchSpec
from bayesnas_tf.spaces.tree.space import TreeCellSpec, TreeNodeSpec, proxyless_cell
from bayesnas_tf.spaces.tree.space import prune_cell, split_sizes

TREE_A = TREE_SPACES["treecell_a"]
PROXYLESS = TREE_SPACES["proxyless"]


def _params(layer):
  return testing.num_params(layer.trainable_weights)


# --- ops -------------------------------------------------------------------------
@pytest.mark.parametrize("op, channels", [
    ("sep3", 6), ("sep5", 6), ("sep7", 6), ("dil_sep3", 6), ("conv1x1", 6),
    ("gconv3", 6), ("avg3", 6), ("max3", 6), ("identity", 6)])
def test_tree_op_layers_and_parameter_formulas(op, channels):
  layer = tree_ops.make_tree_op(op, channels, 1)
  kwargs = layer.get_config()
  for key in ("name", "trainable", "dtype"):
    kwargs.pop(key, None)
  built = testing.run_layer_test(
      type(layer), kwargs, (2, 9, 9, channels), (2, 9, 9, channels),
      expected_num_trainable_params=tree_ops.op_params(op, channels),
      run_training_check=tree_ops.op_params(op, channels) > 0)
  assert _params(built) == tree_ops.op_params(op, channels)


def test_group_conv_stride_two_and_shuffle():
  layer = tree_ops.GroupConv3x3(4, 8, stride=2, shuffle=True)
  testing.run_layer_test(
      tree_ops.GroupConv3x3, {"channels": 4, "out_channels": 8, "stride": 2,
                              "shuffle": True},
      (2, 8, 8, 4), (2, 4, 4, 8), expected_num_trainable_params=9 * 16 + 8)
  # Group g's output channel i lands at 2i + g (a ShuffleNet shuffle).
  layer.build((1, 4, 4, 4))
  x = tf.random.normal([1, 4, 4, 4])
  plain = tree_ops.GroupConv3x3(4, 8, stride=2, name="plain")
  plain.build((1, 4, 4, 4))
  for a, b in zip(plain.weights, layer.weights):
    a.assign(b)
  unshuffled, shuffled = plain(x).numpy(), layer(x).numpy()
  np.testing.assert_allclose(shuffled[..., 0::2], unshuffled[..., :4], atol=1e-6)
  np.testing.assert_allclose(shuffled[..., 1::2], unshuffled[..., 4:], atol=1e-6)


def test_average_pool_excludes_padding():
  pool = tree_ops.SamePool3x3(1, "avg")
  y = pool(tf.ones([1, 4, 4, 1])).numpy()
  np.testing.assert_allclose(y, 1.0)  # Counting the padding would give 4/9.


def test_unknown_op_and_strided_pool_are_rejected():
  with pytest.raises(ValueError, match="cannot downsample"):
    tree_ops.make_tree_op("avg3", 4, 2)
  with pytest.raises(Exception, match="unknown tree op"):
    tree_ops.make_tree_op("sep9", 4, 1)


# --- spaces as data ----------------------------------------------------------------
def test_treecell_a_structure():
  assert len(TREECELL_A.edge_names) == 15
  leaves = [b for _, b, _, _ in TREECELL_A.walk() if b.child is None]
  assert len(leaves) == 9                      # 9 root-to-leaf paths
  assert cell_params(TREECELL_A, 18) == 7956   # PROXYLESS.md 4 item 4
  for c in (18, 40, 100):
    assert cell_params(TREECELL_A, c) == 16.25 * c * c + 149.5 * c
  assert split_sizes(7, 2) == [4, 3]


def test_proxyless_structure_and_gate_layout():
  cell = proxyless_cell()
  assert len(cell.edge_names) == 14
  assert PROXYLESS.edges == tuple(e for e in cell.edge_names if e not in ("e0", "e1"))
  assert len([b for _, b, _, _ in cell.walk() if b.child is None]) == 8
  assert PROXYLESS.num_gates == 8 and len(PROXYLESS.edges) * 8 == 96
  assert TREE_A.num_gates == 1 and len(TREE_A.edges) == 15
  for c in (18, 100):
    assert cell_params(cell, c) == 9 * c * c + 6 * c + 12 * (4 * c * c + 100 * c)


def test_invalid_cells_are_rejected():
  with pytest.raises(GenotypeError, match="copy allocation with concat"):
    TreeCellSpec(TreeNodeSpec("copy", "concat", (TreeBranchSpec(("sep3",)),)))
  with pytest.raises(GenotypeError, match="unknown tree op"):
    TreeCellSpec(TreeNodeSpec("copy", "add", (TreeBranchSpec(("sep9",)),)))
  with pytest.raises(GenotypeError, match="no op but a child"):
    TreeCellSpec(TreeNodeSpec("copy", "add", (TreeBranchSpec(
        (), TreeNodeSpec("copy", "add", (TreeBranchSpec(("sep3",)),))),)))


# --- layers --------------------------------------------------------------------------
@pytest.mark.parametrize("kind, ops, gates, weights", [
    ("none", ("sep3", "avg3"), 0, 0),
    ("single", ("sep5",), 1, 1),
    ("mixed", tree_ops.TREE_PRIMITIVES[:7], 8, 2),
])
def test_tree_edge_layer(kind, ops, gates, weights):
  params = sum(tree_ops.op_params(o, 4) for o in ops) + gates
  edge = testing.run_layer_test(
      TreeEdge, {"channels": 4, "ops": list(ops), "gate_kind": kind},
      (2, 6, 6, 4), (2, 6, 6, 4), expected_num_trainable_params=params,
      expected_num_non_trainable_weights=None)
  assert len(edge.gate_variables) == weights
  assert edge.num_gates == gates


def test_single_gate_scales_the_op_output_and_masks_it():
  edge = TreeEdge(4, ["sep3"], gate_kind="single")
  x = tf.random.normal([2, 5, 5, 4])
  edge.build(x.shape)
  y1 = edge(x).numpy()
  edge.w.assign([0.5])
  np.testing.assert_allclose(edge(x).numpy(), 0.5 * y1, rtol=1e-5, atol=1e-6)
  edge.set_mask([0.0])
  assert not edge.alive and np.all(edge(x).numpy() == 0)


@pytest.mark.parametrize("spec, kind, fixed, stride, channels, params", [
    (TREECELL_A, "none", (), 1, 18, 7956),
    (TREECELL_A, "single", (), 2, 18, 7956 + 15),
    (proxyless_cell(), "mixed", ("e0", "e1"), 1, 6,
     9 * 36 + 6 * 6 + 12 * (4 * 36 + 600) + 96),
])
def test_tree_cell_layer(spec, kind, fixed, stride, channels, params):
  size = 16 if channels > 6 else 8
  out = size // stride
  cell = testing.run_layer_test(
      TreeCell, {"cell_spec": spec.to_dict(), "channels": channels,
                 "stride": stride, "gate_kind": kind, "fixed_edges": list(fixed)},
      (2, size, size, channels), (2, out, out, channels),
      expected_num_trainable_params=params, atol=1e-4, rtol=1e-4)
  assert len(cell.edges) == (0 if kind == "none" else 15 if kind == "single" else 12)


def test_tree_cell_keeps_width_with_pruned_concat_slot():
  # b1_b1 (split/concat) with its sep7 leaf pruned: the slot is zeros.
  spec = TreeCellSpec.from_dict(TREECELL_A.to_dict())
  pruned = derive_cell(TREE_A, _kept_a(pruned=("e0.0.1",)))
  cell = TreeCell(pruned, 6, name="pruned")
  x = tf.random.normal([2, 8, 8, 6])
  assert cell(x).shape == (2, 8, 8, 6)
  assert cell_params(pruned, 6) < cell_params(spec, 6)


# --- tree dependency in the prior (eq. 6 / 8) ---------------------------------------
def _update(space, w, h, lam=0.01):
  e, g = len(space.edges), space.num_gates
  return prior_lib.update_group(
      np.ones((e, g)), np.ones((e, g)), w[np.newaxis], h[np.newaxis],
      np.full(g, lam), np.ones((e, g), bool),
      prior_lib.predecessor_matrix(space), "paper", PRUNE_THRESHOLD)


def test_pruning_a_parent_prunes_its_subtree_reading_a():
  edges = TREE_A.edges
  w = np.ones((15, 1))
  h = np.full((15, 1), 100.0)
  w[edges.index("e1"), 0] = 1e-3          # Root edge e1 -> b2: pruned.
  result = _update(TREE_A, w, h)
  kept = dict(zip(edges, result.kept.numpy()[:, 0]))
  assert not kept["e1"]
  for name in edges:
    assert kept[name] == (not name.startswith("e1")), name
  # gamma of a child is the series combination with its parent's switch.
  s = result.switch.numpy()[:, 0]
  child, parent = edges.index("e0.1"), edges.index("e0")
  np.testing.assert_allclose(result.gamma.numpy()[child, 0],
                             1 / (1 / s[child] + 1 / s[parent]))


def test_pruning_an_edge_gate_prunes_its_leaves_reading_b():
  edges = PROXYLESS.edges
  w = np.ones((12, 8))
  h = np.full((12, 8), 100.0)
  w[edges.index("e0.1"), -1] = 1e-3       # w_all of a level-2 edge.
  w[edges.index("e1.0"), :-1] = 1e-3      # Every op gate of another one.
  kept = _update(PROXYLESS, w, h).kept.numpy()
  for name in edges:
    gone = name.startswith("e0.1") or name.startswith("e1.0")
    row = kept[edges.index(name)]
    assert (row[:-1] & row[-1]).any() != gone, name   # An op needs its w_all.


# --- derivation (PROXYLESS.md 3.3) ----------------------------------------------------
def _kept_a(pruned=()):
  mask = np.ones((15, 1), bool)
  for name in pruned:
    mask[TREE_A.edges.index(name), 0] = False
  return mask


def test_derive_keeps_everything_when_nothing_is_pruned():
  assert derive_cell(TREE_A, _kept_a()) == TREECELL_A


def test_derive_whole_subtree_gone():
  cell = derive_cell(TREE_A, _kept_a(pruned=("e0.1",)))
  assert cell.branch("e0.1").ops == () and cell.branch("e0.1").child is None
  assert cell.branch("e0.0").ops == ("conv1x1",)


def test_derive_edge_whose_child_lost_every_branch_is_removed():
  cell = derive_cell(TREE_A, _kept_a(pruned=("e0.1.0", "e0.1.1")))
  assert cell.branch("e0.1").ops == ()          # max3 fed nothing: removed.


def test_derive_root_branch_keeps_its_skip():
  cell = derive_cell(TREE_A, _kept_a(pruned=("e0.0", "e0.1")))
  assert cell.branch("e0").ops == ("gconv3",) and cell.branch("e0").child is None
  # Gone: conv1x1 (360), sep7 on 9 channels (540), sep3 (522), sep5 (810)
  # and e0's branch BN (36).
  assert cell_params(cell, 18) == 7956 - (360 + 540 + 522 + 810 + 36)


def test_derive_whole_cell_gone():
  assert derive_cell(TREE_A, _kept_a(pruned=("e0", "e1"))) is None
  assert derive_cell(TREE_A, _kept_a(pruned=("e0.0", "e0.1", "e1.0", "e1.1"))) is not None


def test_derive_reading_b_sums_kept_ops_and_keeps_the_root_skips():
  mask = np.zeros((12, 8), bool)
  e = PROXYLESS.edges.index("e0.0")
  mask[e, [1, 3, 7]] = True               # sep3, sep7 and w_all.
  cell = derive_cell(PROXYLESS, mask)
  # Its leaves are gone, so it goes (rule 2), and so does N1: e0 keeps its skip.
  assert cell.branch("e0").ops == ("identity",) and cell.branch("e0").child is None
  mask[PROXYLESS.edges.index("e0.0.1"), [5, 7]] = True
  cell = derive_cell(PROXYLESS, mask)
  assert cell.branch("e0.0").ops == ("sep3", "sep7")
  assert cell.branch("e0.0.1").ops == ("avg3",)
  assert cell.branch("e1").ops == ("identity",) and cell.branch("e1").child is None
  nothing = derive_cell(PROXYLESS, np.zeros((12, 8), bool))
  assert nothing is not None and nothing.pre_edge == "gconv3_x2"
  assert cell_params(nothing, 10) == 9 * 100 + 2 * 10  # pre-edge only, no BNs


def test_prune_cell_is_idempotent_and_supernet_follows_it():
  cell = derive_cell(TREE_A, _kept_a(pruned=("e0.0.0", "e0.0.1", "e1")))
  assert prune_cell(cell) == cell
  net_cell = TreeCell(TREECELL_A, 6, gate_kind="single", name="gated")
  net_cell.build((None, 8, 8, 6))
  net_cell.set_mask(_kept_a(pruned=("e0.0.0", "e0.0.1", "e1")).astype(float))
  derived = TreeCell(cell, 6, name="derived")
  derived.build((None, 8, 8, 6))
  # The same running layers: copy the weights by path and compare outputs.
  source = {v.path.split("/", 1)[1]: v for v in net_cell.weights}
  for variable in derived.weights:
    variable.assign(source[variable.path.split("/", 1)[1]])
  x = tf.random.normal([2, 8, 8, 6])
  np.testing.assert_allclose(derived(x).numpy(), net_cell(x).numpy(), atol=1e-5)


# --- gate Hessians ---------------------------------------------------------------------
class _OneCellNet(keras.Model):
  """stem -> one gated TreeCell-A -> head, with the supernet's gate interface."""

  def __init__(self):
    super().__init__()
    self.stem = keras.layers.Conv2D(4, 1, name="stem")
    self.cell = TreeCell(TREECELL_A, 4, gate_kind="single", name="cell")
    self.head = keras.layers.Dense(3, name="head")
    self.cells = [self.cell]

  @property
  def arch_variables(self):
    return self.cell.gate_variables

  def zero_gate_offsets(self, batch_size):
    return [tf.zeros([batch_size, 15, 1])]

  def call(self, images, training=None, gate_offsets=None):
    offsets = None if gate_offsets is None else gate_offsets[0]
    x = self.cell(self.stem(images), gate_offsets=offsets, training=training)
    return self.head(tf.reduce_mean(x, axis=[1, 2]))


def test_ggn_equals_exact_hessian_on_a_tree_cell():
  # Single gates scale op outputs, so the logits are multilinear in the gates
  # (the root's BN + skip adds two terms linear in the same gate) and the
  # GGN diagonal is the exact Hessian diagonal.
  keras.utils.set_random_seed(1)
  net = _OneCellNet()
  images = tf.random.normal([2, 4, 4, 3])
  labels = tf.constant([0, 2])
  net(images)
  ggn = hessian_lib.gate_hessian(net, images, labels, "ggn")
  exact = hessian_lib.gate_hessian(net, images, labels, "exact")
  assert [tuple(g.shape) for g in ggn] == [(15, 1)]
  np.testing.assert_allclose(ggn[0].numpy(), exact[0].numpy(), rtol=2e-3, atol=1e-7)


def test_supernet_gate_hessians_have_the_prior_layout():
  # Reading B's supernet (reading A's runs in test_proxyless_search.py).
  from bayesnas_tf.spaces.tree.pyramid_tree import PyramidTreeSuperNet
  net = PyramidTreeSuperNet(3, "proxyless", depth_blocks=1, alpha=0, start_planes=2)
  net.build((None, 4, 4, 3))
  hessians = hessian_lib.gate_hessian(net, tf.random.normal([2, 4, 4, 3]),
                                      tf.constant([0, 1]), "ggn_mc",
                                      tf.constant([0, 1], tf.int64))
  assert [tuple(h.shape) for h in hessians] == [(12, 8)] * 3
  assert all(np.all(np.isfinite(h.numpy())) and np.all(h.numpy() >= 0)
             for h in hessians)
