"""`ChildCell`: one cell of a derived (re-train) network (ALGORITHM.md 5.1, 6).

in0 = CReduct(output of cell k-1), in1 = CReduct(output of cell k-2, halved in
size when cell k-1 was a reduction cell); node j = the sum of its genotype's
(op, input) pairs, each its own op layer (no weight sharing, ALGORITHM.md 6
"Keras note"); output = concat(n0..n{K-1}). Ops that read in0/in1 in a
reduction cell have stride 2 (so `id` there is BN + 1x1 conv stride 2).

A node with no op (a degenerate search result: every op entering it was
pruned, ALGORITHM.md 3.6) outputs zeros of the node shape, so the cell output
keeps num_nodes * C channels and the macro network keeps its shapes. A cell
input that no op reads gets no CReduct, so no dead weights exist.

Drop path (training only), on every op output, with the probability passed
to `call` (the model reads it from one shared non-trainable variable, so a
trainer changes it per epoch without re-tracing):

* "official": `F.dropout2d` as in the official code (ALGORITHM.md 5.1): per
  example and channel, keep with probability 1-p and scale kept channels by
  1/(1-p); identity and pooling outputs included.
* "darts": DARTS's drop_path: per example, drop the whole op output with
  probability p and scale by 1/(1-p); every op except the stride-1 `id`.

p = 0 is an exact identity (every mask is 1 and the scale is 1/(1-0) = 1).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.channel_reduce import ChannelReduce
from bayesnas_tf.spaces.dag.genotype import CellGenotype
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.genotype import SIZE_REDUCTS
from bayesnas_tf.spaces.dag.space import is_cell_input
from bayesnas_tf.spaces.dag.space import node_name

DROP_PATHS = ("official", "darts")


def cell_genotype_from_config(value: Any) -> CellGenotype:
  """A cell's nodes, from tuples or their JSON form [[["sep5","in0"],...],...].

  Raises GenotypeError (a ValueError) when the cell is malformed.
  """
  try:
    # The Genotype schema is the one validator of cells (op names, inputs,
    # duplicates); validating the same cell as both cell types reuses it.
    return Genotype(normal=value, reduce=value).normal
  except GenotypeError as e:
    raise GenotypeError(
        f"`genotype_cell` is not a valid cell ({e}). "
        f"Received: genotype_cell={value!r}.") from None


def cell_genotype_to_config(cell: CellGenotype) -> list:
  return [[[op, src] for op, src in node] for node in cell]


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChildCell(keras.layers.Layer):
  """A derived cell: fixed ops, summed per node, nodes concatenated.

  Args:
    genotype_cell: the nodes of one cell type of a `Genotype` (e.g.
      `genotype.normal`), or their JSON form.
    channels: C, the channels of every node (output has num_nodes * C).
    reduction: whether this is a reduction cell (ops on in0/in1 stride 2).
    reduction_prev: whether in1 must be halved in size (cell k-1 was a
      reduction cell, or the ImageNet stem's 56 -> 28 step).
    size_reduct: how in1 is halved, "conv" or "factorized" (ALGORITHM.md 5.1).
    drop_path: "official" (channel-wise dropout) or "darts" (per-example
      path drop).

  `call(in0, in1, drop_prob=None, training=None)`: `in0` is the output of
  cell k-1, `in1` of cell k-2; `drop_prob` is a scalar (tensor) probability,
  used in training only; None disables drop path.
  """

  def __init__(self, genotype_cell, channels: int, reduction: bool = False,
               reduction_prev: bool = False, size_reduct: str = "conv",
               drop_path: str = "official", **kwargs):
    super().__init__(**kwargs)
    cell = cell_genotype_from_config(genotype_cell)
    if isinstance(channels, bool) or not isinstance(channels, int) or (
        channels <= 0):
      raise ValueError(
          f"`channels` must be a positive integer. Received: "
          f"channels={channels!r}.")
    if size_reduct not in SIZE_REDUCTS:
      raise ValueError(
          f"`size_reduct` must be one of {SIZE_REDUCTS}. Received: "
          f"size_reduct={size_reduct!r}.")
    if drop_path not in DROP_PATHS:
      raise ValueError(
          f"`drop_path` must be one of {DROP_PATHS}. Received: "
          f"drop_path={drop_path!r}.")
    self.genotype_cell = cell
    self.channels = channels
    self.reduction = bool(reduction)
    self.reduction_prev = bool(reduction_prev)
    self.size_reduct = size_reduct
    self.drop_path = drop_path

    used = {src for node in cell for _, src in node}
    policy = self.dtype_policy
    self.preprocess0 = (ChannelReduce(channels, name="preprocess0", dtype=policy)
                        if "in0" in used else None)
    self.preprocess1 = (
        ChannelReduce(channels, size_reduct if self.reduction_prev else "none",
                      name="preprocess1", dtype=policy)
        if "in1" in used else None)
    # One list of op layers per node, in genotype order.
    self.node_ops = [
        [ops.make_op(op, channels, self._stride(src),
                     name=f"{node_name(j)}_{op}_{src}", dtype=policy)
         for op, src in node]
        for j, node in enumerate(cell)]
    # The drop-path mask generator is made in `build` (see there).
    self.seed_generator = None

  @property
  def num_nodes(self) -> int:
    return len(self.genotype_cell)

  @property
  def cell_stride(self) -> int:
    return 2 if self.reduction else 1

  def _stride(self, src: str) -> int:
    return 2 if self.reduction and is_cell_input(src) else 1

  def build(self, in0_shape, in1_shape):
    in0_shape, in1_shape = tuple(in0_shape), tuple(in1_shape)
    # Both preprocessed inputs have C channels and in0's size (the CReduct of
    # in0 never changes the size).
    input_shape = in0_shape[:-1] + (self.channels,)
    if self.preprocess0 is not None:
      self.preprocess0.build(in0_shape)
    if self.preprocess1 is not None:
      self.preprocess1.build(in1_shape)
      shape1 = self.preprocess1.compute_output_shape(in1_shape)
      if tuple(shape1[1:3]) != tuple(input_shape[1:3]):
        raise ValueError(
            "the two cell inputs must have the same spatial size after "
            f"preprocessing. Received: in0_shape={in0_shape}, "
            f"in1_shape={in1_shape}, reduction_prev={self.reduction_prev}.")
    # A seeded generator for the drop-path masks. Made here, inside the
    # layer's name scope, so its state variable has a stable path
    # ("<cell>/drop_path_seed/...") and `checkpointing.variables_by_path`
    # saves and restores it; made in `__init__` it would be auto-named
    # "seed_generator_<global count>". Its seed comes from Python's `random`,
    # so `keras.utils.set_random_seed` fixes it.
    self.seed_generator = keras.random.SeedGenerator(name="drop_path_seed")
    node_shape = self.compute_output_shape(in0_shape, in1_shape)[:-1] + (
        self.channels,)
    for node, layers in zip(self.genotype_cell, self.node_ops):
      for (_, src), layer in zip(node, layers):
        # Intermediate nodes have the cell's output resolution.
        layer.build(input_shape if is_cell_input(src) else node_shape)
    self.built = True

  def call(self, in0, in1, drop_prob=None, training=None):
    states = {}
    if self.preprocess0 is not None:
      states["in0"] = self.preprocess0(in0, training=training)
    if self.preprocess1 is not None:
      states["in1"] = self.preprocess1(in1, training=training)
    drop = bool(training) and drop_prob is not None
    for j, (node, layers) in enumerate(zip(self.genotype_cell, self.node_ops)):
      outputs = []
      for (_, src), layer in zip(node, layers):
        y = layer(states[src], training=training)
        if drop:
          y = self._drop(y, layer, drop_prob)
        outputs.append(y)
      states[node_name(j)] = (tf.add_n(outputs) if outputs
                              else self._zeros_node(in0))
    return tf.concat([states[node_name(j)] for j in range(self.num_nodes)],
                     axis=-1)

  def _zeros_node(self, in0):
    # A node with no op (degenerate genotype) contributes zeros.
    shape = tf.shape(in0)
    stride = self.cell_stride
    return tf.zeros(
        [shape[0], (shape[1] - 1) // stride + 1, (shape[2] - 1) // stride + 1,
         self.channels], dtype=self.compute_dtype)

  def _drop(self, y, layer, drop_prob):
    if self.drop_path == "darts" and isinstance(layer, ops.Identity):
      return y  # DARTS never drops the stride-1 identity.
    p = tf.cast(drop_prob, tf.float32)
    units = self.channels if self.drop_path == "official" else 1
    noise = keras.random.uniform(
        [tf.shape(y)[0], 1, 1, units], seed=self.seed_generator,
        dtype="float32")
    # u ~ U[0, 1): P(u >= p) = 1 - p; with p = 0 every mask is exactly 1.
    mask = tf.cast(noise >= p, tf.float32) / (1.0 - p)
    return y * tf.cast(mask, y.dtype)

  def compute_output_shape(self, in0_shape, in1_shape=None):
    return init.strided_shape(in0_shape, self.cell_stride,
                              self.num_nodes * self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({
        "genotype_cell": cell_genotype_to_config(self.genotype_cell),
        "channels": self.channels, "reduction": self.reduction,
        "reduction_prev": self.reduction_prev,
        "size_reduct": self.size_reduct, "drop_path": self.drop_path})
    return config
