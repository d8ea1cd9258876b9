"""The NAS-Bench-201 space: structure, parameter counts, the string form of
all 15,625 cells, Proposition 1 on its DAG, one op per edge, the table
lookup. (End to end from the command line: test_nb201_search.py.)"""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import testing
from bayesnas_tf.config import PRUNE_THRESHOLD
from bayesnas_tf.errors import ConfigError, GenotypeError
from bayesnas_tf.search import prior
from bayesnas_tf.search.benchmark_table import BenchmarkTable
from bayesnas_tf.spaces.nb201 import space
from bayesnas_tf.spaces.nb201.cell import NB201Cell, NB201SearchCell
from bayesnas_tf.spaces.nb201.derive import derive_nb201_genotype, op_scores
from bayesnas_tf.spaces.nb201.genotype import NB201Genotype, parse_arch_string
from bayesnas_tf.spaces.nb201.genotype import trainable_params
from bayesnas_tf.spaces.nb201.network import NB201Network, NB201SuperNet
from bayesnas_tf.spaces.nb201.ops import ReLUConvBN, make_op
from bayesnas_tf.spaces.registry import resolve_genotype
from conftest import SHARED_DATA, requires_shared_data

TABLE = SHARED_DATA / "nb201_cifar10.csv"
C3, C1, SKIP, AVG, NONE = ("nor_conv_3x3", "nor_conv_1x1", "skip_connect",
                           "avg_pool_3x3", "none")
RESNET = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
          "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")


def _count(model):
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


# --- the space ------------------------------------------------------------------
def test_edges_are_the_benchmark_string_order_and_topological():
  assert space.EDGES == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
  spec = space.CELL_SPEC
  assert spec.edge_names == ("0->1", "0->2", "1->2", "0->3", "1->3", "2->3")
  assert [spec.predecessor_edges(e) for e in range(6)] == [
      (), (), (0,), (), (0,), (1, 2)]


def test_supernet_gates_shared_groups_and_shapes():
  net = NB201SuperNet(num_classes=10, cells_per_stage=1, channels=4)
  net.build((None, 32, 32, 3))
  assert len(net.cells) == 3 and net.present_cell_types == [space.CELL_TYPE]
  # 3 cells x 6 edges x (4 op gates + w_all); one group per (edge, gate).
  assert net.num_gates == 3 * 6 * 5
  gates = net.gates_by_type()[space.CELL_TYPE]
  assert gates.shape == (3, 6, 5)
  mask = np.ones((6, 5), np.float32)
  mask[2, 1] = 0.0
  net.set_masks({space.CELL_TYPE: mask})
  for cell in net.cells:          # A group's mask applies to every cell.
    np.testing.assert_array_equal(cell.edges[2].mask.numpy(), mask[2])
    assert cell.edges[2].active_ops == (0, 2, 3)
  logits = net(tf.zeros([2, 32, 32, 3]), training=False)
  assert logits.shape == (2, 10)
  assert {id(v) for v in net.arch_variables}.isdisjoint(
      id(v) for v in net.weight_variables)


@pytest.mark.parametrize("arch, classes, expected", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
     "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 10, 1531546),
    (RESNET, 10, 1288506),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 10, 73306),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
     "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 100, 1537396),
])
def test_benchmark_network_parameter_counts(arch, classes, expected):
  # NB201.md's counts, from the Keras network and from the formula.
  genotype = NB201Genotype.from_string(arch)
  model = NB201Network(genotype, num_classes=classes)
  model.build((None, 32, 32, 3))
  assert _count(model) == expected
  assert trainable_params(genotype, num_classes=classes) == expected


def test_ops_follow_the_benchmark_definitions():
  x = tf.random.normal([2, 5, 5, 3], seed=1)
  # avg_pool_3x3 divides by the valid positions only (count_include_pad=False).
  pooled = make_op("avg_pool_3x3", channels=3, stride=1, name="avg")(x).numpy()
  padded = np.pad(x.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ones = np.pad(np.ones((5, 5)), 1)
  for i, j in ((0, 0), (2, 3), (4, 4)):
    window = padded[:, i:i + 3, j:j + 3]
    expected = window.sum((1, 2)) / ones[i:i + 3, j:j + 3].sum()
    np.testing.assert_allclose(pooled[:, i, j], expected, rtol=1e-5)
  # nor_conv: ReLU -> conv (no bias) -> BN; params k^2 C^2 + 2C when affine.
  op = ReLUConvBN(3, 3, 1, affine=True)
  op.build(x.shape)
  assert _count(op) == 9 * 9 + 6
  y = op(x, training=False).numpy()
  kernel = op.kernel.numpy()
  reference = tf.nn.conv2d(tf.nn.relu(x), kernel, 1, "SAME").numpy()
  np.testing.assert_allclose(y, reference / np.sqrt(1 + 1e-5), rtol=1e-4,
                             atol=1e-5)
  plain = ReLUConvBN(3, 1, 1, affine=False)
  plain.build(x.shape)
  assert _count(plain) == 9        # the search cells' BNs learn nothing


def test_residual_block_pads_symmetrically_at_stride_2():
  from bayesnas_tf.spaces.nb201.network import NB201ResidualBlock  # pylint: disable=import-outside-toplevel
  block = NB201ResidualBlock(4)
  x = tf.random.normal([1, 6, 6, 2], seed=2)
  block.build(x.shape)
  y = block(x, training=False)
  assert y.shape == (1, 3, 3, 4)
  relu = tf.nn.relu(x)
  conv_a = tf.nn.conv2d(tf.pad(relu, [[0, 0], [1, 1], [1, 1], [0, 0]]),
                        block.conv_a.kernel, 2, "VALID") / np.sqrt(1 + 1e-5)
  conv_b = tf.nn.conv2d(tf.nn.relu(conv_a), block.conv_b.kernel, 1,
                        "SAME") / np.sqrt(1 + 1e-5)
  shortcut = tf.nn.conv2d(tf.nn.avg_pool2d(x, 2, 2, "VALID"),
                          block.shortcut_conv.kernel, 1, "VALID")
  np.testing.assert_allclose(y.numpy(), (conv_b + shortcut).numpy(),
                             rtol=1e-4, atol=1e-5)


def test_derived_cell_runs_ops_of_an_empty_node_like_the_benchmark():
  # Node 1 has no input (0->1 is none); 1->3 still runs its conv on zeros,
  # whose BN adds its offset, as the benchmark's InferCell does: node 3 is
  # a constant that does not depend on the input.
  genotype = NB201Genotype((NONE, SKIP, NONE, NONE, C3, NONE))
  assert genotype.nodes_without_input() == (1, 3)
  cell = NB201Cell(genotype, 3)
  x = tf.random.normal([1, 4, 4, 3], seed=3)
  cell.build(x.shape)
  beta = [v for v in cell.trainable_variables if "beta" in v.path][0]
  beta.assign([0.5, -1.0, 2.0])
  y = cell(x, training=False).numpy()
  np.testing.assert_allclose(y, np.broadcast_to([0.5, -1.0, 2.0], y.shape),
                             rtol=1e-6)


@pytest.mark.parametrize("layer_cls, kwargs, shape", [
    (ReLUConvBN, {"channels": 4, "kernel_size": 1}, (2, 4, 4, 4)),
    (ReLUConvBN, {"channels": 4, "kernel_size": 3, "affine": False}, (2, 4, 4, 4)),
    (NB201Cell, {"genotype": RESNET, "channels": 4}, (2, 4, 4, 4)),
    (NB201SearchCell, {"channels": 4}, (2, 4, 4, 4)),
])
def test_layer_config_round_trip(layer_cls, kwargs, shape):
  testing.run_layer_test(layer_cls, kwargs, shape, expected_output_shape=shape)


def test_networks_save_and_load(tmp_path):
  model = NB201Network(RESNET, num_classes=10, cells_per_stage=1, channels=4)
  model.build((None, 16, 16, 3))
  x = tf.random.normal([2, 16, 16, 3], seed=4)
  path = tmp_path / "nb201.keras"
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.genotype == model.genotype
  np.testing.assert_allclose(loaded(x, training=False).numpy(),
                             model(x, training=False).numpy(), rtol=1e-5,
                             atol=1e-6)


# --- the genotype --------------------------------------------------------------
@requires_shared_data(TABLE)
def test_every_table_string_round_trips():
  with open(TABLE, newline="") as f:
    archs = [row["arch"] for row in csv.DictReader(f)]
  assert len(archs) == 5 ** 6
  genotypes = {NB201Genotype.from_string(a) for a in archs}
  assert len(genotypes) == 5 ** 6
  for arch in archs:
    genotype = NB201Genotype.from_string(arch)
    assert genotype.arch == arch
    assert NB201Genotype.from_dict(genotype.to_dict()) == genotype


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "lists 3 nodes"),
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown NB201 op 'conv'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must read 'op~0'"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 .* has 2 input"),
    ("nor_conv_3x3~0|+|", "starts and ends with '|'"),
])
def test_bad_strings_are_one_clear_error(text, message):
  with pytest.raises(GenotypeError, match=message):
    NB201Genotype.from_string(text)


def test_genotype_json_and_resolution(tmp_path):
  genotype = NB201Genotype.from_string(RESNET, {"seed": 3})
  genotype.save(tmp_path / "genotype.json")
  assert resolve_genotype(str(tmp_path)) == genotype
  assert resolve_genotype(str(tmp_path)).search == {"seed": 3}
  assert resolve_genotype(RESNET) == genotype
  assert resolve_genotype("nb201_resnet") == genotype
  assert parse_arch_string(RESNET) == (C3, C3, C3, SKIP, C3, C3)


# --- prior and derivation ---------------------------------------------------
def _update(gates, hessian):
  n = gates.shape[0]
  del n
  pred = prior.predecessor_matrix(space.CELL_SPEC)
  return prior.update_group(np.ones((6, 5)), np.ones((6, 5)), gates, hessian,
                            [0.01] * 5, np.ones((6, 5), bool), pred, "paper")


def test_proposition_1_pruning_0_to_1_switches_off_1_to_2_and_1_to_3():
  gates = np.ones((15, 6, 5))
  gates[:, 0, 4] = 0.01           # the edge gate of 0->1 shrunk by the lasso
  hessian = np.full_like(gates, 100.0)
  result = _update(gates, hessian)
  kept = result.kept.numpy()
  assert not kept[0].any()                     # 0->1 pruned whole
  assert not kept[2].any() and not kept[4].any()   # 1->2 and 1->3 follow
  assert kept[[1, 3, 5]].all()                 # the rest stays
  # Without eq. 8's predecessor term (the official code) they stay on.
  official = prior.update_group(np.ones((6, 5)), np.ones((6, 5)), gates,
                                hessian, [0.01] * 5, np.ones((6, 5), bool),
                                None, "official")
  assert official.kept.numpy()[[2, 4]].all()


def test_one_op_per_edge_and_none_for_pruned_or_unreachable_edges():
  kept = np.ones((6, 5), bool)
  kept[1, 4] = False              # 0->2: edge gate pruned
  kept[3, :4] = False             # 0->3: every op pruned
  kept[0, [0, 1, 3]] = False      # 0->1: only nor_conv_3x3 survives
  scores = np.arange(24, dtype=float).reshape(6, 4)
  scores[5] = [5.0, 1.0, 2.0, 0.5]   # 2->3: skip has the best score
  genotype = derive_nb201_genotype(kept, scores)
  assert genotype.ops == (C3, NONE, AVG, NONE, AVG, SKIP)
  # Node 2's only live input is 1->2; prune it and 2->3 reads nothing.
  kept[2] = False
  genotype = derive_nb201_genotype(kept, scores)
  assert genotype.ops == (C3, NONE, NONE, NONE, AVG, NONE)
  assert genotype.nodes_without_input() == (2,)


def test_op_scores_from_the_posterior():
  rng = np.random.default_rng(0)
  posterior = {"gamma": rng.uniform(0.1, 1, (6, 5)),
               "w": rng.normal(size=(15, 6, 5)),
               "covariance": rng.uniform(0.01, 1, (15, 6, 5))}
  np.testing.assert_array_equal(op_scores(posterior, "gamma"),
                                posterior["gamma"][:, :4])
  np.testing.assert_allclose(
      op_scores(posterior, "w"),
      np.linalg.norm(posterior["w"][:, :, :4], axis=0))
  np.testing.assert_allclose(
      op_scores(posterior, "snr"),
      (posterior["w"][:, :, :4] ** 2 / posterior["covariance"][:, :, :4]).sum(0))
  # snr does not change when an op's output scale moves into its gate: the
  # Hessian scales by c^2 and the gates by 1/c.
  c = 7.0
  h = rng.uniform(1.0, 5.0, (15, 6, 5))
  w = posterior["w"]
  first = prior.update_group(np.full((6, 5), 1e6), np.ones((6, 5)), w, h,
                             [1.0] * 5, np.ones((6, 5), bool))
  second = prior.update_group(np.full((6, 5), 1e6), np.ones((6, 5)), w / c,
                              h * c * c, [1.0] * 5, np.ones((6, 5), bool))
  snr = lambda r, g: op_scores({"w": g, "covariance": r.covariance.numpy()}, "snr")
  np.testing.assert_allclose(snr(first, w), snr(second, w / c), rtol=1e-5)
  assert PRUNE_THRESHOLD > 0


# --- the table -------------------------------------------------------------------
@requires_shared_data(TABLE)
def test_lookup_finds_the_cell_and_its_percentile():
  table = BenchmarkTable.load(str(TABLE))
  entry = table.lookup(RESNET)
  assert entry["accuracy"] == pytest.approx(94.3633)
  assert entry["rank"] == 3 and entry["cells"] == 15625
  assert 99.9 < entry["percentile"] < 100
  assert table.lookup(
      "|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
      "|skip_connect~0|skip_connect~1|skip_connect~2|")["accuracy"] == \
      pytest.approx(54.2967)
  accuracies = np.array(list(table.accuracies.values()))
  assert accuracies.mean() == pytest.approx(87.06, abs=0.01)
  assert np.median(accuracies) == pytest.approx(90.75, abs=0.01)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("name,acc\nx,1\n", "one of them 'arch'"),
    ("arch,acc\n|a|,high\n", "line 2: acc is 'high', not a number"),
    ("arch,acc\n|a|,1\n|a|,2\n", "line 3: |a| is listed twice"),
    ("arch,acc,acc_2\n|a|,1,2\n", "cannot tell which column"),
    ("arch,acc\n", "lists no cell"),
])
def test_malformed_tables_are_one_clear_error(tmp_path, content, message):
  path = tmp_path / "table.csv"
  if content is not None:
    path.write_text(content)
  with pytest.raises(ConfigError, match=message):
    BenchmarkTable.load(str(path))


def test_a_cell_the_table_lacks_is_one_clear_error(tmp_path):
  path = tmp_path / "table.csv"
  path.write_text(f"arch,test_accuracy\n{RESNET},94.36\n")
  table = BenchmarkTable.load(str(path))
  assert table.lookup(RESNET)["percentile"] == 50.0
  with pytest.raises(ConfigError, match="does not list the found cell"):
    table.lookup(RESNET.replace("skip_connect", "none"))
