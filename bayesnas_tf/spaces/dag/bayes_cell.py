"""`BayesCell`: a supernet cell built from a `CellSpec` (ALGORITHM.md 1.2-1.3).

in0 = CReduct(output of cell k-1), in1 = CReduct(output of cell k-2, halved in
size when cell k-1 was a reduction cell); node j = sum of the SwitchedEdges
that enter it; output = concat(n0..n{K-1}). Edges that leave a cell input of a
reduction cell have stride 2.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.layers.switched_edge import SwitchedEdge
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.channel_reduce import ChannelReduce
from bayesnas_tf.spaces.dag.space import CellSpec, is_cell_input


def cell_spec_to_config(spec: CellSpec) -> dict:
  return {"num_nodes": spec.num_nodes, "edges": [list(e) for e in spec.edges]}


def cell_spec_from_config(config) -> CellSpec:
  if isinstance(config, CellSpec):
    return config
  return CellSpec(int(config["num_nodes"]),
                  tuple((str(s), str(d)) for s, d in config["edges"]))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BayesCell(keras.layers.Layer):
  """Args:
    cell_spec: a `CellSpec` (or its config dict) giving the DAG.
    channels: C, the channels of every node (output has num_nodes * C).
    reduction: whether this is a reduction cell (input edges have stride 2).
    reduction_prev: whether cell k-1 was a reduction cell (in1 is halved).
    primitives: op names, in gate order.
    size_reduct: the variant of in1's size reduction ("conv"/"factorized").
  """

  def __init__(self, cell_spec, channels: int, reduction: bool = False,
               reduction_prev: bool = False,
               primitives: Sequence[str] = ops.PRIMITIVES,
               size_reduct: str = "conv", **kwargs):
    super().__init__(**kwargs)
    self.cell_spec = cell_spec_from_config(cell_spec)
    self.channels = channels
    self.reduction = bool(reduction)
    self.reduction_prev = bool(reduction_prev)
    self.primitives = ops.check_primitives(primitives)
    self.size_reduct = size_reduct
    policy = self.dtype_policy
    self.preprocess0 = ChannelReduce(channels, name="preprocess0", dtype=policy)
    self.preprocess1 = ChannelReduce(
        channels, size_reduct if self.reduction_prev else "none",
        name="preprocess1", dtype=policy)
    self.edges = [
        SwitchedEdge(channels, self._stride(src), self.primitives,
                     name=f"edge_{src}_{dst}", dtype=policy)
        for src, dst in self.cell_spec.edges]

  def _stride(self, src: str) -> int:
    return 2 if self.reduction and is_cell_input(src) else 1

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  def build(self, in0_shape, in1_shape):
    self.preprocess0.build(in0_shape)
    self.preprocess1.build(in1_shape)
    shape0 = self.preprocess0.compute_output_shape(in0_shape)
    shape1 = self.preprocess1.compute_output_shape(in1_shape)
    if tuple(shape0[1:3]) != tuple(shape1[1:3]):
      raise ValueError(
          "the two cell inputs must have the same spatial size after "
          f"preprocessing. Received: in0_shape={tuple(in0_shape)}, "
          f"in1_shape={tuple(in1_shape)}, reduction_prev={self.reduction_prev}.")
    stride = 2 if self.reduction else 1
    node_shape = (shape0[0], init.strided_size(shape0[1], stride),
                  init.strided_size(shape0[2], stride), self.channels)
    for edge, (src, _) in zip(self.edges, self.cell_spec.edges):
      # Intermediate nodes have the cell's output resolution.
      edge.build(shape0 if is_cell_input(src) else node_shape)
    self.built = True

  def call(self, in0, in1, gate_offsets=None, training=None):
    """`gate_offsets`: (batch, num_edges, num_ops + 1) per-example offsets."""
    states = {"in0": self.preprocess0(in0, training=training),
              "in1": self.preprocess1(in1, training=training)}
    spec = self.cell_spec
    for node in spec.nodes:
      outputs = []
      for index in spec.edges_into(node):  # CellSpec guarantees at least one.
        src = spec.edges[index][0]
        offsets = None if gate_offsets is None else gate_offsets[:, index, :]
        outputs.append(self.edges[index](
            states[src], gate_offsets=offsets, training=training))
      states[node] = tf.add_n(outputs)
    return tf.concat([states[n] for n in spec.nodes], axis=-1)

  def gates(self) -> tf.Tensor:
    """Effective gates of this cell, (num_edges, num_ops + 1)."""
    return tf.stack([edge.gates() for edge in self.edges])

  @property
  def gate_variables(self):
    return [v for edge in self.edges for v in edge.gate_variables]

  @property
  def num_gates_per_edge(self) -> int:
    """G: one gate per primitive, then the edge gate w_all."""
    return len(self.primitives) + 1

  def set_mask(self, mask) -> None:
    """Sets the (num_edges, num_ops + 1) pruning mask of every edge."""
    for edge, edge_mask in zip(self.edges, np.asarray(mask)):
      edge.set_mask(edge_mask)

  def sync_active_ops(self) -> None:
    for edge in self.edges:
      edge.sync_active_ops()

  def compute_output_shape(self, in0_shape, in1_shape):
    return init.strided_shape(self.preprocess0.compute_output_shape(in0_shape),
                              2 if self.reduction else 1,
                              self.cell_spec.num_nodes * self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({
        "cell_spec": cell_spec_to_config(self.cell_spec),
        "channels": self.channels, "reduction": self.reduction,
        "reduction_prev": self.reduction_prev,
        "primitives": list(self.primitives), "size_reduct": self.size_reduct})
    return config
