"""Keras's own layer test over every layer the package registers (issue 19).

`keras.src.testing.TestCase.run_layer_test` checks the serialization round
trips, the build, eager and symbolic calls, one training step and, with
`run_mixed_precision_check` on (its default), that under `mixed_float16`
the outputs are float16 and every weight float32. The table is keyed by the
registered name ("bayesnas_tf>..."), and a registered layer without a row
fails `test_every_registered_layer_has_a_row`, so a new layer is tested the
moment it is registered. Networks and cells skip the training check: Keras
wraps the layer in a one-input Model that drops the cells' second input and
the MixedOp's weights, and the networks' training is tested in their own
files (test_keras_native.py, test_retrain.py, test_search_loop.py).
"""

from __future__ import annotations

import importlib
import pkgutil

from absl.testing import parameterized
import keras
from keras.src import testing as keras_testing
import tensorflow as tf

import bayesnas_tf
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.dag.space import BAYESNAS_SPACE
from bayesnas_tf.spaces.tree.genotype import PyramidBackbone
from bayesnas_tf.spaces.tree.genotype import TreeGenotype
from bayesnas_tf.spaces.tree.space import TREECELL_A

NB201_RESNET = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")

SUBSET = ("sep3", "dil3", "max", "avg", "id")
CELL = [[["sep3", "in0"], ["max", "in1"]], [["id", "in0"], ["dil3", "n0"]]]
REDUCE_SPEC = {"num_nodes": BAYESNAS_SPACE.reduce.num_nodes,
               "edges": [list(e) for e in BAYESNAS_SPACE.reduce.edges]}
TREE = TreeGenotype(PyramidBackbone(1, 4, 4), (TREECELL_A, None, None))
NO_TRAINING = {"run_training_check": False}


def _case(name, init_kwargs, input_shape, output_shape, **extra):
  return dict(testcase_name=name, init_kwargs=init_kwargs,
              input_shape=input_shape, expected_output_shape=output_shape,
              **extra)


# Registered name -> its run_layer_test cases (small shapes: the test runs in
# CI).
CASES = {
    # nn/
    "BatchNorm": [_case(f"batch_norm_{a}", {"affine": a}, (2, 4, 4, 3),
                        (2, 4, 4, 3)) for a in (True, False)],
    # layers/
    "MixedOp": [_case(
        f"mixed_op_s{s}", {"channels": 4, "stride": s, "primitives": SUBSET},
        (2, 8, 8, 4), (2, 8 // s, 8 // s, 4),
        call_kwargs={"weights": tf.constant([1.0, 0.5, 2.0, 1.5, 0.3])},
        **NO_TRAINING) for s in (1, 2)],
    "SwitchedEdge": [_case(
        f"switched_edge_s{s}", {"channels": 4, "stride": s, "primitives": SUBSET},
        (2, 8, 8, 4), (2, 8 // s, 8 // s, 4)) for s in (1, 2)],
    # spaces/dag/
    "SepConv": [_case("sep_conv", {"channels": 4, "kernel_size": 5, "stride": 2},
                      (2, 8, 8, 4), (2, 4, 4, 4))],
    "DilConv": [_case("dil_conv", {"channels": 4, "kernel_size": 3, "stride": 2},
                      (2, 8, 8, 4), (2, 4, 4, 4))],
    "Pool3x3": [_case("pool", {"channels": 4, "pool_type": "avg", "stride": 2},
                      (2, 8, 8, 4), (2, 4, 4, 4))],
    "Identity": [_case("identity", {"channels": 4}, (2, 8, 8, 4), (2, 8, 8, 4))],
    "ReduceConv": [_case("reduce_conv", {"channels": 4}, (2, 8, 8, 4),
                         (2, 4, 4, 4))],
    "ChannelReduce": [_case(
        f"channel_reduce_{r}", {"channels": 3, "size_reduct": r}, (2, 4, 4, 6),
        (2, 4 if r == "none" else 2, 4 if r == "none" else 2, 3))
                      for r in ("none", "conv", "factorized")],
    "BayesCell": [_case(
        "bayes_cell", {"cell_spec": REDUCE_SPEC, "channels": 4,
                       "reduction": True, "primitives": SUBSET},
        {"in0_shape": (2, 8, 8, 6), "in1_shape": (2, 8, 8, 6)}, (2, 4, 4, 16),
        **NO_TRAINING)],
    "ChildCell": [_case(
        "child_cell", {"genotype_cell": CELL, "channels": 4, "reduction": True,
                       "reduction_prev": True},
        {"in0_shape": (2, 8, 8, 6), "in1_shape": (2, 16, 16, 6)}, (2, 4, 4, 8),
        **NO_TRAINING)],
    "AuxiliaryHead": [_case("auxiliary_head", {"num_classes": 3}, (2, 8, 8, 4),
                            (2, 3))],
    "SuperNet": [_case(
        "supernet", {"num_classes": 3, "cells": 3, "channels": 4,
                     "primitives": ["id"]}, (2, 8, 8, 3), (2, 3),
        **NO_TRAINING)],
    "ChildNetwork": [_case(
        "child_network", {"genotype": KNOWN_GENOTYPES["bayesnas_l0.01"].to_dict(),
                          "num_classes": 3, "cells": 3, "channels": 4},
        (2, 8, 8, 3), (2, 3), **NO_TRAINING)],
    # spaces/tree/
    "TreeSepConv": [_case("tree_sep_conv", {"channels": 4, "kernel_size": 3,
                                            "dilation": 2}, (2, 8, 8, 4),
                          (2, 8, 8, 4))],
    "TreeConv1x1": [_case("tree_conv1x1", {"channels": 4, "stride": 2},
                          (2, 8, 8, 4), (2, 4, 4, 4))],
    "SamePool3x3": [_case("same_pool", {"channels": 4, "pool_type": "max"},
                          (2, 8, 8, 4), (2, 8, 8, 4))],
    "TreeIdentity": [_case("tree_identity", {"channels": 4}, (2, 8, 8, 4),
                           (2, 8, 8, 4))],
    "GroupConv3x3": [_case("group_conv", {"channels": 4, "out_channels": 8,
                                          "stride": 2, "shuffle": True},
                           (2, 8, 8, 4), (2, 4, 4, 8))],
    # The two cases of the issue: they returned float32 under mixed_float16.
    "TreeEdge": [
        _case("tree_edge_mixed", {"channels": 4, "ops": ["sep3", "avg3", "identity"],
                                  "gate_kind": "mixed"}, (2, 8, 8, 4), (2, 8, 8, 4)),
        _case("tree_edge_strided", {"channels": 4, "ops": ["conv1x1"], "stride": 2},
              (2, 8, 8, 4), (2, 4, 4, 4))],
    "TreeCell": [_case("tree_cell", {"cell_spec": TREECELL_A.to_dict(),
                                     "channels": 4, "stride": 2,
                                     "gate_kind": "single"},
                       (2, 8, 8, 4), (2, 4, 4, 4))],
    # Without a cell: its shortcut (the cells run in the networks below).
    "BottleneckBlock": [_case("bottleneck_block", {"in_channels": 4, "channels": 2,
                                                   "stride": 2},
                              (2, 8, 8, 4), (2, 4, 4, 4))],
    "PyramidTreeNet": [_case("pyramid_tree_net", {"genotype": TREE.to_dict(),
                                                  "num_classes": 3},
                             (2, 8, 8, 3), (2, 3), **NO_TRAINING)],
    "PyramidTreeSuperNet": [_case(
        "pyramid_tree_supernet", {"num_classes": 3, "search_space": "treecell_a",
                                  "depth_blocks": 1, "alpha": 0.0,
                                  "start_planes": 2},
        (2, 4, 4, 3), (2, 3), **NO_TRAINING)],
    # spaces/nb201/
    "ReLUConvBN": [_case(f"relu_conv_bn_k{k}s{s}", {"channels": 6, "kernel_size": k,
                                                  "stride": s, "affine": s == 1},
                         (2, 8, 8, 4), (2, 8 // s, 8 // s, 6))
                   for k, s in ((1, 1), (3, 1), (3, 2))],
    "NB201SearchCell": [_case("nb201_search_cell", {"channels": 4},
                              (2, 8, 8, 4), (2, 8, 8, 4))],
    "NB201Cell": [_case("nb201_cell", {"genotype": NB201_RESNET, "channels": 4},
                        (2, 8, 8, 4), (2, 8, 8, 4))],
    "NB201ResidualBlock": [_case("nb201_residual_block", {"channels": 6},
                                 (2, 8, 8, 3), (2, 4, 4, 6))],
    "NB201SuperNet": [_case("nb201_supernet", {"num_classes": 3,
                                               "cells_per_stage": 1, "channels": 2},
                            (2, 8, 8, 3), (2, 3), **NO_TRAINING)],
    "NB201Network": [_case("nb201_network", {"genotype": NB201_RESNET,
                                             "num_classes": 3,
                                             "cells_per_stage": 1, "channels": 2},
                           (2, 8, 8, 3), (2, 3), **NO_TRAINING)],
}


def _registered_layers():
  """{name: class} of every Keras layer registered as "bayesnas_tf>name"."""
  for module in pkgutil.walk_packages(bayesnas_tf.__path__, "bayesnas_tf."):
    if module.name != "bayesnas_tf.testing":
      importlib.import_module(module.name)
  return {name.partition(">")[2]: cls
          for name, cls in keras.saving.get_custom_objects().items()
          if name.startswith("bayesnas_tf>") and isinstance(cls, type)
          and issubclass(cls, keras.layers.Layer)}


LAYERS = _registered_layers()


class RegisteredLayerTest(keras_testing.TestCase):

  def test_every_registered_layer_has_a_row(self):
    self.assertEqual(sorted(LAYERS), sorted(CASES))

  @parameterized.named_parameters(
      (case.pop("testcase_name"), name, case)
      for name, cases in CASES.items() for case in cases)
  def test_layer(self, name, case):
    self.run_layer_test(LAYERS[name], **case)
