"""Tests for bayesnas_tf.spaces.dag.derive: kept masks -> Genotype (ALGORITHM.md 3.6)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.dag.derive import derive_genotype
from bayesnas_tf.spaces.dag.space import BAYESNAS_SPACE
from bayesnas_tf.spaces.dag.space import DARTS_SPACE

PRIMS = ops.PRIMITIVES  # sep3 sep5 dil3 dil5 max avg id
ALL = len(PRIMS)  # column of the edge gate w_all


def _col(op):
  return PRIMS.index(op)


def _empty_masks(space=BAYESNAS_SPACE):
  return {t: np.zeros((len(space.cell(t).edges), len(PRIMS) + 1), bool)
          for t in ("normal", "reduce")}


def _keep(mask, edge_index, *op_names, edge_gate=True):
  for op in op_names:
    mask[edge_index, _col(op)] = True
  mask[edge_index, ALL] = edge_gate


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.name == "absl" and r.levelno == logging.WARNING]


def _masks_for_released_l001():
  """The kept masks the lambda=0.01 search must have ended with."""
  kept = _empty_masks()
  n, r = kept["normal"], kept["reduce"]
  # Normal edges: in0->n0, in1->n0, in0->n1, in1->n1, in0->n2, in1->n2,
  # in1->n3, n0->n3.
  _keep(n, 0, "sep5")
  _keep(n, 1, "sep5", "max", "avg", "id")
  _keep(n, 2, "max", "id")
  _keep(n, 4, "id")
  _keep(n, 5, "max")
  _keep(n, 7, "avg")
  # Reduce edges: in0->n0, in1->n0, in1->n1, n0->n1, in1->n2, n0->n2,
  # in1->n3, n0->n3.
  _keep(r, 0, "id")
  _keep(r, 1, "sep3", "sep5", "max", "avg")
  _keep(r, 2, "max", "avg")
  _keep(r, 4, "sep3", "avg")
  _keep(r, 7, "sep5")
  return kept


def test_hand_made_masks_give_expected_nodes():
  genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, _masks_for_released_l001())
  # Within an edge the ops come in PRIMITIVES order, edges in CellSpec order.
  assert genotype.normal == (
      (("sep5", "in0"), ("sep5", "in1"), ("max", "in1"), ("avg", "in1"),
       ("id", "in1")),
      (("max", "in0"), ("id", "in0")),
      (("id", "in0"), ("max", "in1")),
      (("avg", "n0"),),
  )
  assert genotype.reduce == (
      (("id", "in0"), ("sep3", "in1"), ("sep5", "in1"), ("max", "in1"),
       ("avg", "in1")),
      (("max", "in1"), ("avg", "in1")),
      (("sep3", "in1"), ("avg", "in1")),
      (("sep5", "n0"),),
  )
  # Same op sets as the released cell (only the order within a node differs).
  released = KNOWN_GENOTYPES["bayesnas_l0.01"]
  for t in ("normal", "reduce"):
    assert ([sorted(node) for node in genotype.cell(t)]
            == [sorted(node) for node in released.cell(t)])
  assert genotype.size_reduct == "conv"
  assert genotype.search is None


def test_edge_gate_off_removes_the_whole_edge(caplog):
  kept = _masks_for_released_l001()
  # Every op column of in1->n0 (normal) is on, but its edge gate is off.
  kept["normal"][1, :ALL] = True
  kept["normal"][1, ALL] = False
  with caplog.at_level(logging.WARNING, logger="absl"):
    genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, kept)
  assert genotype.normal[0] == (("sep5", "in0"),)
  assert _warnings(caplog) == []
  # An edge gate on with no op gate on contributes nothing either.
  kept = _masks_for_released_l001()
  kept["reduce"][7, :ALL] = False
  kept["reduce"][7, ALL] = True
  genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, kept)
  assert genotype.reduce[3] == ()


def test_full_mask_keeps_every_op_on_every_edge():
  kept = {t: np.ones((8, ALL + 1), bool) for t in ("normal", "reduce")}
  genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, kept)
  for t in ("normal", "reduce"):
    spec = BAYESNAS_SPACE.cell(t)
    pairs = [pair for node in genotype.cell(t) for pair in node]
    assert len(pairs) == 8 * 7
    expected = [(op, spec.edges[e][0]) for node in spec.nodes
                for e in spec.edges_into(node) for op in PRIMS]
    assert pairs == expected
    assert [len(node) for node in genotype.cell(t)] == [14, 14, 14, 14]


def test_darts_space_full_mask():
  kept = {t: np.ones((14, ALL + 1), bool) for t in ("normal", "reduce")}
  genotype = derive_genotype(DARTS_SPACE, PRIMS, kept)
  assert [len(node) for node in genotype.normal] == [14, 21, 28, 35]


def test_all_false_gives_valid_genotype_and_warns(caplog):
  with caplog.at_level(logging.WARNING, logger="absl"):
    genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, _empty_masks())
  assert isinstance(genotype, Genotype)
  assert genotype.normal == ((),) * 4 and genotype.reduce == ((),) * 4
  assert genotype.degenerate_nodes("normal") == ["n0", "n1", "n2", "n3"]
  assert Genotype.from_json(genotype.to_json()) == genotype
  messages = _warnings(caplog)
  assert any("every op of the normal cell was pruned" in m for m in messages)
  assert any("every op of the reduce cell was pruned" in m for m in messages)


def test_node_losing_every_input_warns(caplog):
  kept = _masks_for_released_l001()
  kept["normal"][2:4] = False  # both edges into n1
  with caplog.at_level(logging.WARNING, logger="absl"):
    genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, kept)
  assert genotype.normal[1] == ()
  assert genotype.degenerate_nodes("normal") == ["n1"]
  assert genotype.degenerate_nodes("reduce") == []
  assert _warnings(caplog) == [
      "node n1 of the normal cell lost every input; it outputs zeros"]


def test_empty_node_feeding_a_kept_op_warns(caplog):
  kept = _masks_for_released_l001()
  kept["reduce"][0:2, ALL] = False  # n0 loses both inputs; n0->n3 sep5 stays
  with caplog.at_level(logging.WARNING, logger="absl"):
    genotype = derive_genotype(BAYESNAS_SPACE, PRIMS, kept)
  assert genotype.reduce[0] == ()
  assert genotype.reduce[3] == (("sep5", "n0"),)
  messages = _warnings(caplog)
  assert "node n0 of the reduce cell lost every input; it outputs zeros" in messages
  assert any("node n0 of the reduce cell has no input but feeds kept op(s) "
             "sep5->n3" in m for m in messages)
  assert len(messages) == 2


def test_primitive_subset_and_metadata():
  prims = ("max", "id")
  kept = {t: np.zeros((8, 3), bool) for t in ("normal", "reduce")}
  kept["normal"][0] = [False, True, True]
  kept["reduce"][:, :] = [True, False, True]
  meta = {"lambda_child": np.float64(0.01), "seed": 1}
  genotype = derive_genotype(BAYESNAS_SPACE, prims, kept, "factorized", meta)
  assert genotype.normal[0] == (("id", "in0"),)
  assert all(op == "max" for node in genotype.reduce for op, _ in node)
  assert genotype.size_reduct == "factorized"
  assert genotype.search == {"lambda_child": 0.01, "seed": 1}


def test_float_zero_one_masks_are_accepted():
  kept = {t: m.astype(np.float32) for t, m in _masks_for_released_l001().items()}
  assert (derive_genotype(BAYESNAS_SPACE, PRIMS, kept)
          == derive_genotype(BAYESNAS_SPACE, PRIMS, _masks_for_released_l001()))


def test_bad_inputs_raise():
  kept = _empty_masks()
  with pytest.raises(ValueError, match=r"missing reduce"):
    derive_genotype(BAYESNAS_SPACE, PRIMS, {"normal": kept["normal"]})
  with pytest.raises(ValueError, match=r"kept\['normal'\] must have shape \(8, 8\)"):
    derive_genotype(BAYESNAS_SPACE, PRIMS,
                    {"normal": np.zeros((8, 7), bool), "reduce": kept["reduce"]})
  with pytest.raises(ValueError, match=r"boolean \(or 0/1\) mask"):
    derive_genotype(BAYESNAS_SPACE, PRIMS,
                    {"normal": np.full((8, 8), 0.3), "reduce": kept["reduce"]})
  with pytest.raises(ValueError, match=r"unknown primitive"):
    derive_genotype(BAYESNAS_SPACE, ("sep3", "conv9"), kept)
