"""The NAS-Bench-201 macro network (NB201.md, "The network"), as the search
supernet (`NB201SuperNet`, gated cells) and as the derived network of a
genotype (`NB201Network`).

stem: 3x3 conv (3 -> C, padding 1, no bias), BN;
N cells at C, 32x32; residual block C -> 2C (stride 2);
N cells at 2C; residual block 2C -> 4C; N cells at 4C;
BN, ReLU, global average pool, linear.

The residual block's branch is ReLU-Conv3x3(stride 2)-BN, ReLU-Conv3x3-BN;
its shortcut a 2x2 average pool (stride 2) and a 1x1 conv (no bias, no BN);
the output is their sum. All 3N cell positions share one cell type.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.layers.gated import GatedCells
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.nn.batch_norm import BatchNorm
from bayesnas_tf.spaces.nb201 import space
from bayesnas_tf.spaces.nb201.cell import NB201Cell, NB201SearchCell
from bayesnas_tf.spaces.nb201.cell import as_nb201_genotype
from bayesnas_tf.spaces.nb201.ops import ReLUConvBN

STAGES = 3


def _check_sizes(num_classes, cells_per_stage, channels):
  for arg, value in (("num_classes", num_classes),
                     ("cells_per_stage", cells_per_stage),
                     ("channels", channels)):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(
          f"`{arg}` must be a positive integer. Received: {arg}={value!r}.")
  if num_classes < 2:
    raise ValueError(
        f"`num_classes` must be at least 2. Received: num_classes={num_classes}.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class NB201ResidualBlock(keras.layers.Layer):
  """The stage transition C -> 2C, stride 2 (NB201.md step 3)."""

  def __init__(self, channels: int, **kwargs):
    super().__init__(**kwargs)
    init.check_positive("channels", channels)
    self.channels = channels
    policy = self.dtype_policy
    self.conv_a = ReLUConvBN(channels, 3, 2, True, name="conv_a", dtype=policy)
    self.conv_b = ReLUConvBN(channels, 3, 1, True, name="conv_b", dtype=policy)
    self.shortcut_pool = keras.layers.AveragePooling2D(
        2, 2, padding="valid", name="shortcut_pool", dtype=policy)
    self.shortcut_conv = init.conv1x1(channels, 1, "shortcut_conv", policy)

  def build(self, input_shape):
    self.conv_a.build(input_shape)
    self.conv_b.build(self.conv_a.compute_output_shape(input_shape))
    init.build_sequence([self.shortcut_pool, self.shortcut_conv], input_shape)
    self.built = True

  def call(self, inputs, training=None):
    branch = self.conv_b(self.conv_a(inputs, training=training),
                         training=training)
    return branch + self.shortcut_conv(self.shortcut_pool(inputs))

  def compute_output_shape(self, input_shape):
    return self.conv_a.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels})
    return config


class _NB201Backbone(keras.Model):
  """Stem, three stages of `self.cells` with the residual blocks, head."""

  def _make_backbone(self, num_classes: int, channels: int, cells) -> None:
    policy = self.dtype_policy
    self.stem_conv = keras.layers.Conv2D(
        channels, 3, padding="same", use_bias=False,
        kernel_initializer=init.conv_initializer(), name="stem_conv",
        dtype=policy)
    self.stem_bn = BatchNorm(name="stem_bn", dtype=policy)
    self.cells = list(cells)
    self.blocks = [NB201ResidualBlock(channels * 2 ** (s + 1),
                                      name=f"resblock_{s}", dtype=policy)
                   for s in range(STAGES - 1)]
    self.head_bn = BatchNorm(name="head_bn", dtype=policy)
    self.global_pool = keras.layers.GlobalAveragePooling2D(
        name="global_pool", dtype=policy)
    final = channels * 2 ** (STAGES - 1)
    self.classifier = keras.layers.Dense(
        num_classes, kernel_initializer=init.conv_initializer(),
        bias_initializer=init.dense_bias_initializer(final), name="classifier",
        dtype=policy)

  def _stage_order(self):
    """Cells and blocks in network order."""
    n = len(self.cells) // STAGES
    order = []
    for s in range(STAGES):
      order += [("cell", i) for i in range(s * n, (s + 1) * n)]
      if s < STAGES - 1:
        order.append(("block", s))
    return order

  def build(self, input_shape):
    shape = init.build_sequence([self.stem_conv, self.stem_bn],
                                   tuple(input_shape))
    for kind, index in self._stage_order():
      layer = self.cells[index] if kind == "cell" else self.blocks[index]
      layer.build(shape)
      shape = tuple(layer.compute_output_shape(shape))
    init.build_sequence([self.head_bn, self.global_pool, self.classifier],
                           shape)
    self.built = True

  def _forward(self, images, training, gate_offsets=None):
    x = self.stem_bn(self.stem_conv(images), training=training)
    for kind, index in self._stage_order():
      if kind == "block":
        x = self.blocks[index](x, training=training)
      elif gate_offsets is None:
        x = self.cells[index](x, training=training)
      else:
        x = self.cells[index](x, gate_offsets=gate_offsets[index],
                              training=training)
    x = tf.nn.relu(self.head_bn(x, training=training))
    return self.classifier(self.global_pool(x))


@keras.saving.register_keras_serializable(package=PACKAGE)
class NB201SuperNet(GatedCells, _NB201Backbone):
  """The search network of `--search_space=nb201`.

  Args:
    num_classes: classifier outputs.
    cells_per_stage: N (the benchmark: 5).
    channels: C (the benchmark: 16).
    ops: the gated ops of every edge (default all four of `space.OPS`).
    bn_affine: whether the cells' conv ops have affine BNs (the benchmark's
      and DARTS's search cells do not; their stem and residual blocks do).
    gate_init: the op gates' w(0); default 1/len(ops), so that an edge
      starts as the mean of its ops. With the paper's w(0) = 1 an edge
      starts as their sum: the skip and pooling paths of a cell then add up
      to about 17x its input, and the 15 cells of the benchmark network
      reach 1e19 (float32 squares overflow: NaN Hessians, measured).

  `call(images, training=None, gate_offsets=None)`: `gate_offsets` is None
  or one (batch, 6, len(ops) + 1) tensor per cell.
  """

  def __init__(self, num_classes: int = 10, cells_per_stage: int = 5,
               channels: int = 16, ops: Sequence[str] = space.OPS,
               bn_affine: bool = False, gate_init=None, **kwargs):
    super().__init__(**kwargs)
    _check_sizes(num_classes, cells_per_stage, channels)
    self.num_classes = num_classes
    self.cells_per_stage = cells_per_stage
    self.channels = channels
    self.ops = tuple(ops)
    self.bn_affine = bool(bn_affine)
    self.gate_init = (1.0 / len(self.ops) if gate_init is None
                      else float(gate_init))
    cells = [NB201SearchCell(channels * 2 ** s, self.ops, self.bn_affine,
                             self.gate_init, name=f"cell_{s}_{i}",
                             dtype=self.dtype_policy)
             for s in range(STAGES) for i in range(cells_per_stage)]
    self.cell_types: List[str] = [space.CELL_TYPE] * len(cells)
    self._make_backbone(num_classes, channels, cells)

  def call(self, inputs, training=None, gate_offsets=None):
    return self._forward(inputs, training, gate_offsets)

  # --- the search loop's interface (models/supernet.py's SuperNet) --------
  @property
  def present_cell_types(self) -> List[str]:
    return [space.CELL_TYPE]

  def cells_of_type(self, cell_type: str) -> List[NB201SearchCell]:
    return [c for c, t in zip(self.cells, self.cell_types) if t == cell_type]

  def stack_by_type(self, per_cell: Sequence[tf.Tensor]) -> Dict[str, tf.Tensor]:
    if len(per_cell) != len(self.cells):
      raise ValueError(f"expected {len(self.cells)} values, one per cell; "
                       f"received {len(per_cell)}")
    return {space.CELL_TYPE: tf.stack(list(per_cell))}

  def gates_by_type(self) -> Dict[str, tf.Tensor]:
    return self.stack_by_type([c.gates() for c in self.cells])

  def masks_by_type(self) -> Dict[str, np.ndarray]:
    return {space.CELL_TYPE: np.stack(
        [np.asarray(e.mask.numpy()) for e in self.cells[0].edges])}

  def set_masks(self, masks: Dict[str, np.ndarray]) -> None:
    for cell_type, mask in masks.items():
      for cell in self.cells_of_type(cell_type):
        for edge, edge_mask in zip(cell.edges, np.asarray(mask)):
          edge.set_mask(edge_mask)

  def sync_active_ops(self) -> None:
    for cell in self.cells:
      for edge in cell.edges:
        edge.sync_active_ops()

  def zero_gate_offsets(self, batch_size) -> List[tf.Tensor]:
    return [tf.zeros([batch_size, cell.num_edges, len(self.ops) + 1],
                     dtype=self.compute_dtype) for cell in self.cells]

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes,
                   "cells_per_stage": self.cells_per_stage,
                   "channels": self.channels, "ops": list(self.ops),
                   "bn_affine": self.bn_affine, "gate_init": self.gate_init})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class NB201Network(_NB201Backbone):
  """The benchmark's network of one genotype (its parameter count is
  `genotype.trainable_params`).

  Args:
    genotype: an `NB201Genotype`, its string or its dict.
    num_classes: classifier outputs.
    cells_per_stage: N (the benchmark: 5).
    channels: C (the benchmark: 16).

  `call(images, training=None, return_auxiliary=False)` returns logits, or
  `(logits, None)` for the trainer (there is no auxiliary head).
  """

  def __init__(self, genotype, num_classes: int = 10, cells_per_stage: int = 5,
               channels: int = 16, **kwargs):
    super().__init__(**kwargs)
    _check_sizes(num_classes, cells_per_stage, channels)
    self.genotype = as_nb201_genotype(genotype)
    self.num_classes = num_classes
    self.cells_per_stage = cells_per_stage
    self.channels = channels
    cells = [NB201Cell(self.genotype, channels * 2 ** s, name=f"cell_{s}_{i}",
                       dtype=self.dtype_policy)
             for s in range(STAGES) for i in range(cells_per_stage)]
    self._make_backbone(num_classes, channels, cells)

  def call(self, inputs, training=None, return_auxiliary=False):
    logits = self._forward(inputs, training)
    return (logits, None) if return_auxiliary else logits

  def set_drop_prob(self, p: float) -> None:
    """The trainer's drop-path hook: the benchmark trains without drop path."""
    if float(p) != 0.0:
      raise ValueError("NB201 networks train without drop path (the "
                       "benchmark's recipe); pass --drop_prob=0")

  def get_config(self):
    config = super().get_config()
    config.update({"genotype": self.genotype.to_dict(),
                   "num_classes": self.num_classes,
                   "cells_per_stage": self.cells_per_stage,
                   "channels": self.channels})
    return config
