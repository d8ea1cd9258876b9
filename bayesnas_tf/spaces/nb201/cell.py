"""NAS-Bench-201 cells: the gated search cell and the derived (fixed) cell.

node 0 = the cell input; node j = sum over i < j of op_{i->j}(node i); the
output is node 3 (NB201.md). Every cell op keeps the channels and the
resolution.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from bayesnas_tf.layers.switched_edge import SwitchedEdge
from bayesnas_tf.spaces.nb201 import ops as nb201_ops
from bayesnas_tf.spaces.nb201 import space
from bayesnas_tf.spaces.nb201.genotype import NB201Genotype

PACKAGE = nb201_ops.PACKAGE


def _sum_or_zeros(terms, like):
  return tf.add_n(terms) if terms else tf.zeros_like(like)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NB201SearchCell(keras.layers.Layer):
  """The search cell: one `SwitchedEdge` per edge (gates w over `ops` and
  the edge gate w_all), with the NB201 op set.

  Args:
    channels: C of every node.
    ops: the gated op names (`space.OPS` or a subset), in gate order.
    bn_affine: whether the conv ops' BNs have a scale and an offset.
    gate_init: the op gates' initial value (network.NB201SuperNet).

  `call(x, gate_offsets=None, training=None)`: `gate_offsets`, of shape
  (batch, 6, len(ops) + 1), are added to the gates per example (the Hessian
  estimators, search/hessian.py).
  """

  def __init__(self, channels: int, ops: Sequence[str] = space.OPS,
               bn_affine: bool = False, gate_init: float = 0.25, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.bn_affine = bool(bn_affine)
    self.gate_init = float(gate_init)
    self.op_set = nb201_ops.op_set_name(self.bn_affine)
    self.ops = tuple(ops)
    self.edges = [
        SwitchedEdge(channels, 1, self.ops, self.op_set, self.gate_init,
                     name=f"edge_{src}_{dst}", dtype=self.dtype_policy)
        for src, dst in space.EDGES]

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  def build(self, input_shape):
    if input_shape[-1] is not None and input_shape[-1] != self.channels:
      raise ValueError(f"NB201SearchCell expects {self.channels} input channels. "
                       f"Received: input_shape={tuple(input_shape)}.")
    for edge in self.edges:
      edge.build(input_shape)
    self.built = True

  def call(self, inputs, gate_offsets=None, training=None):
    nodes = [inputs]
    for j in range(1, space.NUM_NODES):
      terms = []
      for k in space.CELL_SPEC.edges_into(j):
        edge = self.edges[k]
        if not edge.active_ops:
          continue   # A pruned edge is `none`: it adds nothing.
        offsets = None if gate_offsets is None else gate_offsets[:, k, :]
        terms.append(edge(nodes[space.EDGES[k][0]], gate_offsets=offsets,
                          training=training))
      nodes.append(_sum_or_zeros(terms, inputs))
    return nodes[-1]

  def gates(self) -> tf.Tensor:
    """Effective gates of this cell, (6, len(ops) + 1)."""
    return tf.stack([edge.gates() for edge in self.edges])

  @property
  def gate_variables(self):
    return [v for edge in self.edges for v in edge.gate_variables]

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "ops": list(self.ops),
                   "bn_affine": self.bn_affine, "gate_init": self.gate_init})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class NB201Cell(keras.layers.Layer):
  """A derived cell: the genotype's op on each edge, `none` edges absent.

  As in the benchmark's own networks, every non-`none` op is built and run,
  also one whose source node has no input (it then reads zeros; a conv op's
  BN still adds its offset), so the parameter counts and the function are
  those of the table's networks.

  Args:
    genotype: an `NB201Genotype`, its benchmark string or its dict.
    channels: C.
  """

  def __init__(self, genotype, channels: int, **kwargs):
    super().__init__(**kwargs)
    self.genotype = as_nb201_genotype(genotype)
    self.channels = channels
    self.edge_ops = [
        None if op == space.NONE else nb201_ops.make_op(
            op, channels=channels, stride=1, name=f"edge_{src}_{dst}_{op}",
            dtype=self.dtype_policy, affine=True)
        for (src, dst), op in zip(space.EDGES, self.genotype.ops)]

  def build(self, input_shape):
    for op in self.edge_ops:
      if op is not None and not op.built:
        op.build(input_shape)
    self.built = True

  def call(self, inputs, training=None):
    nodes = [inputs]
    for j in range(1, space.NUM_NODES):
      terms = []
      for k in space.CELL_SPEC.edges_into(j):
        op = self.edge_ops[k]
        if op is None:
          continue
        terms.append(op(nodes[space.EDGES[k][0]], training=training))
      nodes.append(_sum_or_zeros(terms, inputs))
    return nodes[-1]

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({"genotype": self.genotype.to_dict(),
                   "channels": self.channels})
    return config


def as_nb201_genotype(value) -> NB201Genotype:
  if isinstance(value, NB201Genotype):
    return value
  if isinstance(value, str):
    return NB201Genotype.from_string(value)
  return NB201Genotype.from_dict(value)
