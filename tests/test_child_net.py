"""Tests of the derived cells and re-train networks (ALGORITHM.md 5, 6, 9.2).

Paper-size networks are only built (never run) and built once per module;
forward passes use small networks.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf import testing
from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.dag.child_cell import ChildCell
from bayesnas_tf.spaces.dag.child_net import AuxiliaryHead
from bayesnas_tf.spaces.dag.child_net import ChildNetwork
from bayesnas_tf.runtime import checkpointing

CIFAR_SHAPE = (None, 32, 32, 3)
IMAGENET_SHAPE = (None, 224, 224, 3)
IMAGENET = dict(variant="imagenet", cells=14, channels=48, num_classes=1000)

# ALGORITHM.md 5.2, 5.3 and 6 (counted on the official PyTorch modules).
PAPER_NETS = {
    "cifar-l0.01": ("bayesnas_l0.01", {}, CIFAR_SHAPE, 2_575_702),
    "cifar-l0.007": ("bayesnas_l0.007", {}, CIFAR_SHAPE, 3_197_350),
    "cifar-l0.005": ("bayesnas_l0.005", {}, CIFAR_SHAPE, 2_512_198),
    "imagenet": ("bayesnas_imagenet", IMAGENET, IMAGENET_SHAPE, 4_008_928),
    "imagenet-l0.005": ("bayesnas_l0.005", IMAGENET, IMAGENET_SHAPE,
                        3_901_216),
    "imagenet-l0.007": ("bayesnas_l0.007", IMAGENET, IMAGENET_SHAPE,
                        4_709_920),
}

SMALL = dict(num_classes=3, cells=3, channels=4)
SMALL_SHAPE = (None, 8, 8, 1)

# A degenerate search result: n1 lost every op, and the normal cell never
# reads in0.
DEGENERATE = Genotype(
    normal=((("sep3", "in1"),), (), (("max", "n0"), ("id", "n1"))),
    reduce=((("id", "in0"), ("avg", "in1")), (), (("sep3", "n1"),)))


@pytest.fixture(scope="module")
def paper_nets():
  """Built (not run) paper-size networks, created on first use."""
  cache = {}

  def get(key):
    if key not in cache:
      name, kwargs, shape, _ = PAPER_NETS[key]
      model = ChildNetwork(KNOWN_GENOTYPES[name], **kwargs)
      model.build(shape)
      cache[key] = model
    return cache[key]

  return get


def small_net(genotype="bayesnas_l0.01", **kwargs):
  model = ChildNetwork(KNOWN_GENOTYPES.get(genotype, genotype),
                       **{**SMALL, **kwargs})
  model.build(SMALL_SHAPE)
  return model


def images(batch=2, shape=SMALL_SHAPE, seed=0):
  rng = np.random.RandomState(seed)
  return tf.constant(rng.standard_normal((batch,) + shape[1:]), tf.float32)


# --- parameter counts and shapes ----------------------------------------------
@pytest.mark.parametrize("key", list(PAPER_NETS))
def test_paper_parameter_counts(paper_nets, key):
  model = paper_nets(key)
  assert testing.num_params(model.trainable_variables) == PAPER_NETS[key][3]


def test_cifar_shapes(paper_nets):
  model = paper_nets("cifar-l0.01")
  shapes = model.cell_output_shapes(CIFAR_SHAPE)
  # 6 normal cells at 32 (4*36 channels), reduction after normal cells 5 and
  # 11 (ALGORITHM.md 5.2): 7 cells at 16 (288), 7 at 8 (576).
  assert [(s[-1], s[1]) for s in shapes] == (
      [(144, 32)] * 6 + [(288, 16)] * 7 + [(576, 8)] * 7)
  assert model.feature_shape(CIFAR_SHAPE) == (None, 8, 8, 576)
  assert model.compute_output_shape(CIFAR_SHAPE) == (None, 10)
  assert [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]
  assert model.num_nodes == 4


def test_imagenet_shapes(paper_nets):
  model = paper_nets("imagenet")
  shapes = model.cell_output_shapes(IMAGENET_SHAPE)
  assert [(s[-1], s[1]) for s in shapes] == (
      [(192, 28)] * 4 + [(384, 14)] * 5 + [(768, 7)] * 5)
  assert model.feature_shape(IMAGENET_SHAPE) == (None, 7, 7, 768)
  assert [i for i, c in enumerate(model.cells) if c.reduction] == [4, 9]
  # The stem hands cell 0 a 56x56 k-2 input: it halves it like a cell after
  # a reduction (ALGORITHM.md 5.3); cell 1 reads stem1 (28x28) unchanged.
  assert model.cells[0].reduction_prev
  assert model.cells[0].preprocess1.size_reduct == "conv"
  assert not model.cells[1].reduction_prev
  assert model.cells[1].preprocess1.size_reduct == "none"


def test_size_reduct_follows_genotype(paper_nets):
  model = paper_nets("cifar-l0.005")
  after_reduction = [model.cells[i + 1] for i in (6, 13)]
  assert [c.preprocess1.size_reduct for c in after_reduction] == [
      "factorized"] * 2
  assert all(c.preprocess1.size_reduct == "none"
             for i, c in enumerate(model.cells) if i not in (7, 14))


def test_stride_two_exactly_on_input_ops_of_reduction_cells(paper_nets):
  model = paper_nets("cifar-l0.01")
  for cell in model.cells:
    for node, layers in zip(cell.genotype_cell, cell.node_ops):
      for (op, src), layer in zip(node, layers):
        expected = 2 if cell.reduction and src in ("in0", "in1") else 1
        assert layer.stride == expected, (cell.name, layer.name)
        if op == "id":
          assert isinstance(
              layer, ops.ReduceConv if expected == 2 else ops.Identity)


def test_every_op_has_its_own_weights(paper_nets):
  model = paper_nets("cifar-l0.007")
  paths = [v.path for v in model.trainable_variables]
  assert len(paths) == len(set(paths))
  ids = [id(v) for v in model.trainable_variables]
  assert len(ids) == len(set(ids))


# --- degenerate genotypes -----------------------------------------------------
def test_empty_node_is_zeros_and_unused_input_has_no_weights():
  cell = ChildCell(DEGENERATE.normal, 4, name="cell")
  in0, in1 = images(2, (None, 6, 6, 5)), images(2, (None, 6, 6, 6), seed=1)
  out = cell(in0, in1).numpy()
  assert out.shape == (2, 6, 6, 12)
  np.testing.assert_array_equal(out[..., 4:8], 0.0)
  assert np.any(out[..., :4] != 0)
  # in0 is never read: no CReduct (and no dead weights) for it.
  assert cell.preprocess0 is None and cell.preprocess1 is not None


def test_network_with_empty_nodes_runs_and_trains():
  model = small_net(DEGENERATE)
  x = images(3)
  with tf.GradientTape() as tape:
    logits = model(x, training=True)
    loss = tf.reduce_sum(tf.square(logits))
  assert logits.shape == (3, 3)
  grads = tape.gradient(loss, model.trainable_variables)
  for variable, grad in zip(model.trainable_variables, grads):
    assert grad is not None, variable.path
    assert np.all(np.isfinite(grad)), variable.path


# --- ChildCell layer tests ----------------------------------------------------
def creduct_params(c_in, c_out, size_reduct):
  # BN(Cin) + 1x1 Cin->Cout, plus Cin^2 for either size reduction variant.
  return 2 * c_in + c_in * c_out + (0 if size_reduct == "none" else c_in ** 2)


def op_params(op, c, stride):
  return {"sep3": 2 * c * c + 22 * c, "sep5": 2 * c * c + 54 * c,
          "max": 0, "avg": 0,
          "id": 0 if stride == 1 else c * c + 2 * c}[op]


def cell_case(genotype, cell_type, reduction_prev, size_reduct="conv"):
  cell = KNOWN_GENOTYPES[genotype].cell(cell_type)
  c, c0, c1, size = 4, 6, 6, 8
  reduction = cell_type == "reduce"
  in1_size = 2 * size if reduction_prev else size
  out = size // 2 if reduction else size
  params = creduct_params(c0, c, "none") + creduct_params(
      c1, c, size_reduct if reduction_prev else "none")
  for node in cell:
    for op, src in node:
      stride = 2 if reduction and src in ("in0", "in1") else 1
      params += op_params(op, c, stride)
  return dict(
      init_kwargs={"genotype_cell": cell, "channels": c,
                   "reduction": reduction, "reduction_prev": reduction_prev,
                   "size_reduct": size_reduct},
      input_shape=((2, size, size, c0), (2, in1_size, in1_size, c1)),
      expected_output_shape=(2, out, out, len(cell) * c),
      expected_num_trainable_params=params)


@pytest.mark.parametrize("genotype,cell_type,reduction_prev,size_reduct", [
    ("bayesnas_l0.01", "normal", False, "conv"),
    ("bayesnas_l0.01", "normal", True, "conv"),
    ("bayesnas_l0.01", "reduce", False, "conv"),
    ("bayesnas_l0.005", "normal", True, "factorized"),
    ("bayesnas_l0.005", "reduce", False, "factorized"),
])
def test_child_cell_layer(genotype, cell_type, reduction_prev, size_reduct):
  case = cell_case(genotype, cell_type, reduction_prev, size_reduct)
  testing.run_layer_test(ChildCell, case.pop("init_kwargs"), **case)


def test_child_cell_layer_with_drop_path_in_the_training_step():
  case = cell_case("bayesnas_l0.007", "reduce", False)
  kwargs = {**case.pop("init_kwargs"), "drop_path": "darts"}
  testing.run_layer_test(ChildCell, kwargs, call_kwargs={"drop_prob": 0.2},
                         **case)


def test_child_cell_accepts_json_cell_and_validates():
  cell = KNOWN_GENOTYPES["bayesnas_l0.01"].normal
  as_json = json.loads(json.dumps(cell))
  layer = ChildCell(as_json, 4)
  assert layer.genotype_cell == cell
  assert layer.get_config()["genotype_cell"] == as_json
  with pytest.raises(GenotypeError, match="genotype_cell"):
    ChildCell([[["conv9", "in0"]]], 4)
  with pytest.raises(ValueError, match="channels=0"):
    ChildCell(cell, 0)
  with pytest.raises(ValueError, match="size_reduct='pool'"):
    ChildCell(cell, 4, size_reduct="pool")
  with pytest.raises(ValueError, match="drop_path='x'"):
    ChildCell(cell, 4, drop_path="x")


# --- drop path ----------------------------------------------------------------
def single_op_cell(op, drop_path, reduction=False, seed=0):
  keras.utils.set_random_seed(seed)  # Fixes the SeedGenerator's seed.
  cell = ChildCell((((op, "in0"),),), channels=8, reduction=reduction,
                   drop_path=drop_path)
  in0, in1 = images(16, (None, 6, 6, 8)), images(16, (None, 6, 6, 8), 1)
  cell.build(in0.shape, in1.shape)
  return cell, in0, in1


@pytest.mark.parametrize("drop_path", ["official", "darts"])
def test_drop_prob_zero_is_exact_identity(drop_path):
  cell, in0, in1 = single_op_cell("avg", drop_path)
  reference = cell(in0, in1, training=True).numpy()
  dropped = cell(in0, in1, drop_prob=tf.constant(0.0), training=True).numpy()
  np.testing.assert_array_equal(dropped, reference)


@pytest.mark.parametrize("drop_path", ["official", "darts"])
def test_drop_path_inactive_at_inference(drop_path):
  cell, in0, in1 = single_op_cell("max", drop_path)
  reference = cell(in0, in1).numpy()
  for training in (None, False):
    out = cell(in0, in1, drop_prob=0.5, training=training).numpy()
    np.testing.assert_array_equal(out, reference)


def test_official_drop_path_zeroes_channels_per_example():
  # A single stride-1 `id` op: the cell output is the CReduct output, masked.
  cell, in0, in1 = single_op_cell("id", "official")
  x = cell.preprocess0(in0, training=True).numpy()
  y = cell(in0, in1, drop_prob=tf.constant(0.5), training=True).numpy()
  # Each (example, channel) is either all 0 or all 2x over space.
  dropped = np.all(y == 0, axis=(1, 2))  # (batch, channels)
  kept = np.all(np.isclose(y, 2 * x, rtol=1e-6, atol=0), axis=(1, 2))
  assert not np.any(np.all(x == 0, axis=(1, 2)))
  assert np.all(dropped ^ kept)
  assert 0 < np.sum(dropped) < dropped.size
  # Channel masks differ between examples (it is not one mask per batch).
  assert len({tuple(row) for row in dropped}) > 1
  # A second call draws fresh masks.
  y2 = cell(in0, in1, drop_prob=tf.constant(0.5), training=True).numpy()
  assert np.any(y2 != y)


@pytest.mark.parametrize("op,reduction", [("max", False), ("id", True)])
def test_darts_drop_path_drops_whole_op_outputs_per_example(op, reduction):
  cell, in0, in1 = single_op_cell(op, "darts", reduction)
  reference = cell(in0, in1, training=True).numpy()
  y = cell(in0, in1, drop_prob=tf.constant(0.5), training=True).numpy()
  dropped = np.all(y == 0, axis=(1, 2, 3))
  kept = np.all(np.isclose(y, 2 * reference, rtol=1e-6), axis=(1, 2, 3))
  assert np.all(dropped | kept)
  assert 0 < np.sum(dropped) < len(y)


def test_darts_never_drops_stride_one_identity():
  cell, in0, in1 = single_op_cell("id", "darts")
  reference = cell(in0, in1, training=True).numpy()
  y = cell(in0, in1, drop_prob=tf.constant(0.5), training=True).numpy()
  np.testing.assert_array_equal(y, reference)


def test_model_drop_prob_is_shared_and_needs_no_retrace():
  model = small_net()
  x = images(4)
  step = tf.function(lambda x: model(x, training=True))
  model.set_drop_prob(0.0)
  first = step(x).numpy()
  np.testing.assert_array_equal(step(x).numpy(), first)
  model.set_drop_prob(0.5)
  assert not np.array_equal(step(x).numpy(), first)
  np.testing.assert_array_equal(model(x, training=False).numpy(),
                                model(x).numpy())
  assert step.experimental_get_tracing_count() == 1
  assert float(model.drop_prob.numpy()) == 0.5
  assert not model.drop_prob.trainable
  with pytest.raises(ValueError, match="p=1.0"):
    model.set_drop_prob(1.0)


def test_drop_path_state_has_stable_checkpoint_paths():
  # checkpointing.variables_by_path saves every variable (drop_prob and the
  # mask generators included) under a path that must not depend on how many
  # models the process built before.
  first = checkpointing.variables_by_path(small_net())
  second = checkpointing.variables_by_path(small_net())
  assert sorted(first) == sorted(second)
  assert "drop_prob" in first
  seeds = [k for k in first if k.endswith("seed_generator_state")]
  assert seeds == [f"cell_{i}_{t}/drop_path_seed/seed_generator_state"
                   for i, t in enumerate(("normal", "reduce", "reduce"))]


# --- serialization ------------------------------------------------------------
def test_config_round_trip_rebuilds_same_network(paper_nets):
  model = paper_nets("cifar-l0.005")
  config = json.loads(json.dumps(model.get_config()))
  assert config["genotype"] == KNOWN_GENOTYPES["bayesnas_l0.005"].to_dict()
  revived = ChildNetwork.from_config(config)
  assert revived.genotype == model.genotype
  assert revived.genotype.size_reduct == "factorized"
  revived.build(CIFAR_SHAPE)
  assert testing.num_params(revived.trainable_variables) == 2_512_198
  assert json.dumps(revived.get_config(), sort_keys=True) == json.dumps(
      config, sort_keys=True)


# Keras's own .keras writer calls np.array(variable), which NumPy 2 flags.
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")
def test_keras_save_load_round_trip(tmp_path):
  keras.utils.set_random_seed(1)
  model = small_net(auxiliary=True, drop_path="darts")
  model.set_drop_prob(0.1)
  x = images(2)
  path = str(tmp_path / "child.keras")
  model.save(path)
  revived = keras.models.load_model(path)
  assert isinstance(revived, ChildNetwork)
  assert revived.genotype == model.genotype
  assert revived.auxiliary and revived.drop_path == "darts"
  assert float(revived.drop_prob.numpy()) == pytest.approx(0.1)
  for a, b in zip(model(x, return_auxiliary=True),
                  revived(x, return_auxiliary=True)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- auxiliary head -----------------------------------------------------------
def test_auxiliary_logits_of_a_small_network():
  model = small_net(auxiliary=True)
  logits, aux = model(images(2), training=True, return_auxiliary=True)
  assert logits.shape == (2, 3) and aux.shape == (2, 3)
  assert model.auxiliary_index == 2  # 2*cells//3, the second reduction.
  logits, aux = small_net()(images(2), training=True, return_auxiliary=True)
  assert aux is None and logits.shape == (2, 3)


@pytest.mark.parametrize("variant,input_shape,classes,bn", [
    ("cifar", (1, 8, 8, 576), 10, True), ("imagenet", (1, 7, 7, 768), 1000,
                                          False)])
def test_auxiliary_head_at_paper_size(variant, input_shape, classes, bn):
  head = AuxiliaryHead(classes, variant)
  head.build(input_shape)
  c = input_shape[-1]
  # DARTS: 1x1 conv c->128, BN, 2x2 conv 128->768, [BN], dense 768->classes.
  expected = (c * 128 + 2 * 128 + 4 * 128 * 768 + (2 * 768 if bn else 0)
              + 768 * classes + classes)
  assert testing.num_params(head.trainable_variables) == expected
  assert head(images(1, input_shape)).shape == (1, classes)


def test_auxiliary_head_is_not_counted_in_the_main_network():
  model = ChildNetwork(KNOWN_GENOTYPES["bayesnas_l0.01"], auxiliary=True)
  model.build(CIFAR_SHAPE)
  assert testing.num_params(model.main_variables) == 2_575_702
  assert model.auxiliary_head.built


# --- validation ---------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"variant": "svhn"}, "variant='svhn'"),
    ({"cells": 2}, "cells=2"),
    ({"channels": 1}, "channels=1"),
    ({"num_classes": 1}, "num_classes=1"),
    ({"drop_path": "none"}, "drop_path='none'"),
    ({"auxiliary": 1}, "auxiliary=1"),
])
def test_network_validates_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ChildNetwork(KNOWN_GENOTYPES["bayesnas_l0.01"], **kwargs)


def test_network_accepts_genotype_dict_and_name():
  genotype = KNOWN_GENOTYPES["bayesnas_l0.007"]
  assert ChildNetwork(genotype.to_dict(), **SMALL).genotype == genotype
  assert ChildNetwork("bayesnas_l0.007", **SMALL).genotype == genotype
  with pytest.raises(ValueError, match="genotype=3"):
    ChildNetwork(3)
