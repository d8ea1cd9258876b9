"""`SuperNet`: the one-shot search network (ALGORITHM.md 1.4).

stem (3x3 conv, 3 -> stem_multiplier*C, no BN) -> cells -> BN -> ReLU ->
global average pool -> dense. Reduction cells sit at 1/3 and 2/3 of the depth
and double C. The stem output feeds both inputs of the first cell. At the
paper's configuration (8 cells, C=36, 10 classes) it has 26,911,350 trainable
parameters, 512 of them gates.
"""

from __future__ import annotations

from typing import List, Sequence

import keras

from bayesnas_tf.layers.gated import GatedCells
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.nn import recompute as recompute_lib
from bayesnas_tf.nn.init import dense_bias_initializer
from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.bayes_cell import BayesCell
from bayesnas_tf.spaces.dag.space import get_search_space
from bayesnas_tf.spaces.dag.space import reduction_positions


@keras.saving.register_keras_serializable(package=PACKAGE)
class SuperNet(GatedCells, keras.Model):
  """Args:
    num_classes: classifier outputs.
    cells: number of cells (>= 3); reductions at cells//3 and 2*cells//3.
    channels: C of the first cells.
    search_space: a name from `search_space.SEARCH_SPACES`.
    primitives: op names (gate order); default all 7.
    stem_multiplier: stem output channels = stem_multiplier * C.
    recompute_cells: in training, recompute each cell's activations in the
      backward pass instead of keeping them (recompute.py): less memory, the
      same numbers, about one more forward pass of compute. Calls with gate
      offsets (the Hessian estimators) and inference are not affected.
  """

  def __init__(self, num_classes: int = 10, cells: int = 8, channels: int = 36,
               search_space: str = "bayesnas",
               primitives: Sequence[str] = ops.PRIMITIVES,
               stem_multiplier: int = 3, recompute_cells: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    for arg, value in (("num_classes", num_classes), ("channels", channels),
                       ("stem_multiplier", stem_multiplier)):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{arg}` must be a positive integer. Received: {arg}={value!r}.")
    if num_classes < 2:
      raise ValueError(
          f"`num_classes` must be at least 2. Received: num_classes={num_classes}.")
    self.num_classes = num_classes
    self.num_cells = cells
    self.channels = channels
    self.search_space = search_space
    self.primitives = ops.check_primitives(primitives)
    self.stem_multiplier = stem_multiplier
    self.recompute_cells = bool(recompute_cells)
    space = get_search_space(search_space)
    reductions = reduction_positions(cells)

    # Sublayers take the network's dtype policy (Keras 3 does not pass it on).
    policy = self.dtype_policy
    self.stem_pad = keras.layers.ZeroPadding2D(1, name="stem_pad", dtype=policy)
    self.stem_conv = keras.layers.Conv2D(
        stem_multiplier * channels, 3, padding="valid", use_bias=False,
        kernel_initializer=init.conv_initializer(), name="stem_conv",
        dtype=policy)
    self.cells: List[BayesCell] = []
    self.cell_types: List[str] = []
    c = channels
    reduction_prev = False
    for index in range(cells):
      reduction = index in reductions
      if reduction:
        c *= 2
      cell_type = "reduce" if reduction else "normal"
      self.cells.append(BayesCell(
          space.cell(cell_type), c, reduction, reduction_prev,
          self.primitives, name=f"cell_{index}_{cell_type}", dtype=policy))
      self.cell_types.append(cell_type)
      reduction_prev = reduction
    self.head_bn = init.batch_norm("head_bn", policy)
    self.head_relu = keras.layers.ReLU(name="head_relu", dtype=policy)
    self.global_pool = keras.layers.GlobalAveragePooling2D(name="global_pool",
                                                           dtype=policy)
    final_channels = space.normal.num_nodes * c
    self.classifier = keras.layers.Dense(
        num_classes, kernel_initializer=init.conv_initializer(),
        bias_initializer=dense_bias_initializer(final_channels),
        name="classifier", dtype=policy)

  # --- building ---------------------------------------------------------
  def build(self, input_shape):
    input_shape = tuple(input_shape)
    shape = init.build_sequence([self.stem_pad, self.stem_conv], input_shape)
    prev_prev, prev = shape, shape
    for cell in self.cells:
      cell.build(prev, prev_prev)
      prev_prev, prev = prev, cell.compute_output_shape(prev, prev_prev)
    init.build_sequence(
        [self.head_bn, self.head_relu, self.global_pool, self.classifier], prev)
    self.built = True

  def call(self, inputs, training=None, gate_offsets=None):
    """`gate_offsets`: None or one (batch, num_edges, num_ops+1) per cell."""
    x = self.stem_conv(self.stem_pad(inputs))
    prev_prev, prev = x, x
    recompute = self.recompute_cells and training and gate_offsets is None
    for index, cell in enumerate(self.cells):
      offsets = None if gate_offsets is None else gate_offsets[index]
      if recompute:
        output = recompute_lib.recompute_grad(
            lambda a, b, cell=cell: cell(a, b, training=True))(prev, prev_prev)
      else:
        output = cell(prev, prev_prev, gate_offsets=offsets, training=training)
      prev_prev, prev = prev, output
    x = self.head_relu(self.head_bn(prev, training=training))
    return self.classifier(self.global_pool(x))

  def special_hessian(self, method: str, images):
    """`--hessian=diag_backprop`: the paper's estimator, whose shadow
    network walks this supernet's layers (diag_backprop.py)."""
    if method != "diag_backprop":
      return None
    from bayesnas_tf.spaces.dag import diag_backprop  # pylint: disable=g-import-not-at-top
    return diag_backprop.diag_backprop_diagonal(self, images)

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_classes": self.num_classes, "cells": self.num_cells,
        "channels": self.channels, "search_space": self.search_space,
        "primitives": list(self.primitives),
        "stem_multiplier": self.stem_multiplier,
        "recompute_cells": self.recompute_cells})
    return config
