"""The bottleneck PyramidNet with tree cells (PROXYLESS.md 2, 4): widths,
parameter counts of the published networks, shapes, blocks, genotypes."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import config as config_lib
from bayesnas_tf import modes
from bayesnas_tf import testing
from bayesnas_tf.errors import ConfigError, GenotypeError
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.registry import resolve_genotype
from bayesnas_tf.spaces.tree.tree_cell import TreeCell
from bayesnas_tf.spaces.tree.pyramid_tree import BottleneckBlock, PyramidTreeNet
from bayesnas_tf.spaces.tree.pyramid_tree import PyramidTreeSuperNet
from bayesnas_tf.spaces.tree.derive import derive_tree_genotype
from bayesnas_tf.spaces.tree.genotype import BUILTIN_TREE_GENOTYPES, PyramidBackbone
from bayesnas_tf.spaces.tree.genotype import TreeGenotype, trainable_params
from bayesnas_tf.spaces.tree.space import TREE_SPACES, TREECELL_A, pyramid_widths

WIDTHS_84 = [18, 18, 20, 22, 24, 24, 26, 28, 30, 32, 32, 34, 36, 38, 38, 40, 42, 44,
             46, 46, 48, 50, 52, 52, 54, 56, 58, 60, 60, 62, 64, 66, 66, 68, 70, 72,
             74, 74, 76, 78, 80, 80, 82, 84, 86, 88, 88, 90, 92, 94, 94, 96, 98, 100]
PAPER_COUNTS = {"treecell_a_b18_a84": 5736930, "treecell_a_b18_a150": 14293302,
                "proxyless_g_cifar": 5731530}


def _count(variables):
  return testing.num_params(variables)


def test_widths():
  assert list(pyramid_widths(18, 84)) == WIDTHS_84
  wide = pyramid_widths(18, 150)
  assert list(wide[:5]) == [18, 22, 24, 26, 30] and wide[-1] == 166
  assert 4 * WIDTHS_84[-1] == 4 * (16 + 84)         # F = 4(16 + alpha)
  with pytest.raises(ConfigError, match="every width must be an even number >= 2"):
    pyramid_widths(1, -15)
  with pytest.raises(ConfigError, match="--depth_blocks must be a positive"):
    pyramid_widths(0, 84)


def test_formula_counts_of_every_published_configuration():
  for name, expected in PAPER_COUNTS.items():
    assert trainable_params(BUILTIN_TREE_GENOTYPES[name]) == expected, name
  plain = TreeGenotype(PyramidBackbone(18, 84), (None,) * 54)
  assert trainable_params(plain) == 464 + 2 * 16 + 10 * 16 + 10  # stem + head


@pytest.fixture(scope="module")
def treecell_a_84():
  model = PyramidTreeNet("treecell_a_b18_a84", 10)
  model.build((None, 32, 32, 3))
  return model


def test_keras_counts_of_the_builtin_networks(treecell_a_84):
  assert _count(treecell_a_84.trainable_variables) == PAPER_COUNTS["treecell_a_b18_a84"]
  # The same code path as `main.py --mode=retrain --genotype=... --summary_only`.
  config = config_lib.ExperimentConfig(
      mode="retrain", data=config_lib.DataConfig(dataset="cifar10"),
      train=config_lib.TrainConfig(genotype="proxyless_g_cifar"))
  assert modes.summary(config) == {"trainable_params": PAPER_COUNTS["proxyless_g_cifar"]}


def test_shapes_through_the_blocks(treecell_a_84):
  model = treecell_a_84
  shapes = model.block_output_shapes((None, 32, 32, 3))
  assert model.stem_conv.compute_output_shape((None, 34, 34, 3)) == (None, 32, 32, 16)
  assert shapes[0] == (None, 32, 32, 72)
  assert shapes[17] == (None, 32, 32, 176)
  assert shapes[18] == (None, 16, 16, 184)     # avg pool + zero-pad 176 -> 184
  assert shapes[36] == (None, 8, 8, 296)
  assert shapes[-1] == (None, 8, 8, 400)
  for i, shape in enumerate(shapes):
    assert shape[1] == 32 // (1 + (i >= 18) + 2 * (i >= 36)), i
  bn_channels = sum(int(np.prod(v.shape)) for v in model.trainable_variables
                    if v.path.endswith("gamma"))
  assert bn_channels == 64607                     # PROXYLESS.md 4 item 3
  # Keras's count_params adds the BN moving statistics (and the one
  # non-trainable path-drop probability).
  assert _count(model.trainable_variables) + 2 * bn_channels == 5866144
  assert model(tf.zeros([1, 32, 32, 3])).shape == (1, 10)


def test_gate_counts_of_the_supernets():
  tree_a, proxyless = TREE_SPACES["treecell_a"], TREE_SPACES["proxyless"]
  assert 54 * len(tree_a.edges) * tree_a.num_gates == 810
  assert 54 * len(proxyless.edges) * proxyless.num_gates == 5184
  nets = {}
  for space, gate_shape in (("treecell_a", (1, 15, 1)), ("proxyless", (1, 12, 8))):
    net = PyramidTreeSuperNet(10, space, depth_blocks=2, alpha=4, start_planes=4)
    net.build((None, 8, 8, 3))
    assert net.num_gates == 6 * gate_shape[1] * gate_shape[2]
    gates = net.gates_by_type()
    assert list(gates) == [f"block_{i:02d}" for i in range(1, 7)]
    assert all(tuple(g.shape) == gate_shape for g in gates.values())
    nets[space] = net
  # Reading A's supernet is TreeCell-A's network plus its gates.
  full = TreeGenotype(nets["treecell_a"].backbone, (TREECELL_A,) * 6)
  assert _count(nets["treecell_a"].weight_variables) == trainable_params(full)


def _tiny_genotype(cells=None):
  backbone = PyramidBackbone(1, 6, 4)           # widths 6, 8, 10
  return TreeGenotype(backbone, cells or (TREECELL_A,) * 3, "treecell_a")


def test_bottleneck_block_layer():
  cell = TreeCell(TREECELL_A, 6, 2, name="cell")
  block_params = 2 * 8 + 8 * 6 + 4 * 36 + 2 * 6 + 8 * 6 + 16.25 * 36 + 149.5 * 6
  testing.run_layer_test(
      BottleneckBlock, {"in_channels": 8, "channels": 6, "stride": 2,
                        "cell": keras.saving.serialize_keras_object(cell)},
      (2, 8, 8, 8), (2, 4, 4, 24), expected_num_trainable_params=int(block_params),
      atol=1e-4, rtol=1e-4)
  testing.run_layer_test(
      BottleneckBlock, {"in_channels": 8, "channels": 6, "stride": 2, "cell": None},
      (2, 8, 8, 8), (2, 4, 4, 8), expected_num_trainable_params=0,
      run_training_check=False)


def test_removed_cell_makes_the_next_block_read_the_narrower_input():
  full = _tiny_genotype()
  removed = _tiny_genotype((TREECELL_A, None, TREECELL_A))
  model = PyramidTreeNet(removed, 10)
  model.build((None, 8, 8, 3))
  assert [b.in_channels for b in model.blocks] == [4, 24, 24]
  assert model.blocks[1].cell is None
  assert model.block_output_shapes((None, 8, 8, 3))[1] == (None, 4, 4, 24)
  assert _count(model.trainable_variables) == trainable_params(removed)
  assert trainable_params(removed) < trainable_params(full)
  # Derived from masks: a block whose two root gates are pruned is removed.
  kept = {f"block_{i:02d}": np.ones((15, 1), bool) for i in (1, 2, 3)}
  kept["block_02"][[0, 7]] = False              # e0 and e1
  derived = derive_tree_genotype(TREE_SPACES["treecell_a"], full.backbone, kept)
  assert derived == removed and derived.removed_blocks() == [2]
  assert derived.kept_edges() == [15, 0, 15]


def test_tree_genotype_json_round_trip_and_dispatch(tmp_path):
  genotype = BUILTIN_TREE_GENOTYPES["proxyless_g_cifar"]
  path = tmp_path / "genotype.json"
  genotype.save(path)
  data = json.loads(path.read_text())
  assert data["kind"] == "pyramid_tree" and data["schema_version"] == 1
  assert len(data["cells"]) == 54
  assert Genotype.load(path) == genotype
  assert resolve_genotype(str(tmp_path)) == genotype
  assert resolve_genotype("treecell_a_b18_a150").backbone.alpha == 150


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["cells"].pop(), "needs one cell (or null) per block"),
    (lambda d: d.update(kind="pyramid_tree", extra=1), "unknown pyramid_tree"),
    (lambda d: d["backbone"].update(alpha=-40), "backbone is invalid"),
    (lambda d: d["cells"][0]["root"]["branches"][0].update(ops=["conv9"]),
     "unknown tree op"),
    (lambda d: d.update(schema_version=9), "newer bayesnas_tf"),
])
def test_bad_tree_genotypes_are_rejected(edit, message):
  data = _tiny_genotype().to_dict()
  edit(data)
  with pytest.raises(GenotypeError, match=re.escape(message)):
    Genotype.from_dict(data)


def test_network_trains_saves_and_drops_paths(tmp_path):
  model = PyramidTreeNet(_tiny_genotype(), 10, name="child_network")
  model.build((None, 8, 8, 3))
  x = tf.random.normal([4, 8, 8, 3])
  logits, aux = model(x, training=True, return_auxiliary=True)
  assert logits.shape == (4, 10) and aux is None
  model.set_drop_prob(0.5)
  a = model(x, training=True).numpy()
  b = model(x, training=True).numpy()
  assert not np.allclose(a, b)                  # Path drop is random in training.
  np.testing.assert_allclose(model(x).numpy(), model(x).numpy())
  model.set_drop_prob(0.0)
  path = tmp_path / "tree.keras"
  model.save(path)
  revived = keras.saving.load_model(path)
  np.testing.assert_allclose(revived(x).numpy(), model(x).numpy(), atol=1e-5)
  assert revived.genotype == model.genotype
