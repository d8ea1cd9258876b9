"""Bottleneck PyramidNet with tree cells (PROXYLESS.md 2; PL pyramidnet.py).

stem: pad 1 + 3x3 conv 3 -> 16 (no BN/act inside) -> BN;
3B blocks, widths C_i of `space.pyramid_widths`, stride 2 at the first
block of stages 2 and 3, each:
    residual = final BN(4C) <- out_bottle [BN -> ReLU -> 1x1 C -> 4C]
               <- cell (C -> C, the block's stride)
               <- in_bottle [BN -> 1x1 Cin -> C, no ReLU]
    shortcut = identity, or 2x2 average pool stride 2 when downsampling,
               zero-padded in channels from Cin to 4C;
    output   = shortcut + residual;
head: BN -> ReLU -> global average pool (the 8x8 pool at 32x32 input) ->
dense (bias).

`PyramidTreeNet` is the derived (retrain/export) network of a
`TreeGenotype`; a block whose cell was removed is its shortcut path alone,
so the next block reads the narrower input (PROXYLESS.md 3.3 rule 4).
`PyramidTreeSuperNet` is the search network of a tree search space: every
block's cell is gated and is its own cell type ("block_01", ...) with n = 1,
so no gate is shared across cells (BN L273). It offers the interface the
search loop and the Hessian estimators use (`cells`, `cell_types`,
`gates_by_type`, `set_masks`, `zero_gate_offsets`, `arch_variables`, ...).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import keras
import tensorflow as tf

from bayesnas_tf.layers.gated import GatedCells
from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.nn.init import dense_bias_initializer
from bayesnas_tf.spaces.tree.genotype import PyramidBackbone, TreeGenotype
from bayesnas_tf.spaces.tree.space import BOTTLENECK, START_PLANES, block_name
from bayesnas_tf.spaces.tree.space import block_strides, get_tree_space, pyramid_widths
from bayesnas_tf.spaces.tree.tree_cell import TreeCell


@keras.saving.register_keras_serializable(package=PACKAGE)
class BottleneckBlock(keras.layers.Layer):
  """One PyramidNet block around a tree cell (or none).

  Args:
    in_channels: Cin, the previous block's output channels.
    channels: C, the bottleneck width (the cell's width).
    stride: 1, or 2 at the first block of stages 2 and 3.
    cell: a `TreeCell` (or its serialized form), or None for a block whose
      whole cell was pruned: the block is then its shortcut path only and
      keeps Cin channels.

  `call(x, gate_offsets=None, drop_prob=None, training=None)` passes the
  offsets and the path-drop probability to the cell. A search cell whose
  every root branch is pruned is skipped (the block is its zero-padded
  shortcut, so the next block's input width is unchanged in the supernet).
  """

  def __init__(self, in_channels: int, channels: int, stride: int = 1,
               cell=None, **kwargs):
    super().__init__(**kwargs)
    for name, value in (("in_channels", in_channels), ("channels", channels)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: "
                         f"{name}={value!r}.")
    if stride not in (1, 2):
      raise ValueError(f"`stride` must be 1 or 2. Received: stride={stride!r}.")
    if isinstance(cell, dict):
      cell = keras.saving.deserialize_keras_object(cell)
    if cell is not None and not isinstance(cell, TreeCell):
      raise ValueError(f"`cell` must be a TreeCell or None. Received: cell={cell!r}.")
    if cell is not None and (cell.channels != channels or cell.stride != stride):
      raise ValueError(
          f"the cell has width {cell.channels} and stride {cell.stride}, the "
          f"block {channels} and {stride}.")
    self.in_channels = in_channels
    self.channels = channels
    self.stride = stride
    self.cell = cell
    policy = self.dtype_policy
    self.shortcut_pool = (keras.layers.AveragePooling2D(
        2, 2, padding="valid", name="shortcut_pool", dtype=policy)
                          if stride == 2 else None)
    if cell is not None:
      self.in_bn = init.batch_norm("in_bn", policy)
      self.in_conv = init.conv1x1(channels, 1, "in_conv", policy)
      self.out_bn = init.batch_norm("out_bn", policy)
      self.out_relu = keras.layers.ReLU(name="out_relu", dtype=policy)
      self.out_conv = init.conv1x1(BOTTLENECK * channels, 1, "out_conv", policy)
      self.final_bn = init.batch_norm("final_bn", policy)

  @property
  def out_channels(self) -> int:
    return self.in_channels if self.cell is None else BOTTLENECK * self.channels

  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if input_shape[-1] is not None and input_shape[-1] != self.in_channels:
      raise ValueError(f"BottleneckBlock expects {self.in_channels} input "
                       f"channels. Received: input_shape={input_shape}.")
    if self.shortcut_pool is not None:
      self.shortcut_pool.build(input_shape)
    if self.cell is not None:
      shape = init.build_sequence([self.in_bn, self.in_conv], input_shape)
      self.cell.build(shape)
      shape = self.cell.compute_output_shape(shape)
      init.build_sequence([self.out_bn, self.out_relu, self.out_conv,
                          self.final_bn], shape)
    self.built = True

  def _shortcut(self, x):
    return x if self.shortcut_pool is None else self.shortcut_pool(x)

  def call(self, inputs, gate_offsets=None, drop_prob=None, training=None):
    shortcut = self._shortcut(inputs)
    if self.cell is None:
      return shortcut
    pad = BOTTLENECK * self.channels - self.in_channels
    if pad > 0:
      shortcut = tf.pad(shortcut, [[0, 0], [0, 0], [0, 0], [0, pad]])
    if not self.cell.alive:
      return shortcut
    x = self.in_conv(self.in_bn(inputs, training=training))
    x = self.cell(x, gate_offsets=gate_offsets, drop_prob=drop_prob,
                  training=training)
    x = self.out_conv(self.out_relu(self.out_bn(x, training=training)))
    return shortcut + self.final_bn(x, training=training)

  def compute_output_shape(self, input_shape):
    return init.strided_shape(input_shape, self.stride, self.out_channels)

  def get_config(self):
    config = super().get_config()
    config.update({
        "in_channels": self.in_channels, "channels": self.channels,
        "stride": self.stride,
        "cell": (None if self.cell is None
                 else keras.saving.serialize_keras_object(self.cell))})
    return config


class _PyramidBackboneModel(keras.Model):
  """Stem, blocks and head shared by the derived network and the supernet."""

  def _make_backbone(self, num_classes: int, start_planes: int,
                     widths: Sequence[int], strides: Sequence[int],
                     cells: Sequence[Optional[TreeCell]]) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
      raise ValueError(f"`num_classes` must be an integer >= 2. Received: "
                       f"num_classes={num_classes!r}.")
    # Sublayers take the network's dtype policy (Keras 3 does not pass it on).
    policy = self.dtype_policy
    self.stem_pad = keras.layers.ZeroPadding2D(1, name="stem_pad", dtype=policy)
    self.stem_conv = keras.layers.Conv2D(
        start_planes, 3, padding="valid", use_bias=False,
        kernel_initializer=init.conv_initializer(), name="stem_conv",
        dtype=policy)
    self.stem_bn = init.batch_norm("stem_bn", policy)
    self.blocks: List[BottleneckBlock] = []
    in_channels = start_planes
    for index, (width, stride, cell) in enumerate(zip(widths, strides, cells)):
      block = BottleneckBlock(in_channels, width, stride, cell,
                              name=block_name(index), dtype=policy)
      self.blocks.append(block)
      in_channels = block.out_channels
    self.final_channels = in_channels
    self.head_bn = init.batch_norm("head_bn", policy)
    self.head_relu = keras.layers.ReLU(name="head_relu", dtype=policy)
    self.global_pool = keras.layers.GlobalAveragePooling2D(name="global_pool",
                                                           dtype=policy)
    self.classifier = keras.layers.Dense(
        num_classes, kernel_initializer=init.conv_initializer(),
        bias_initializer=dense_bias_initializer(in_channels), name="classifier",
        dtype=policy)

  def build(self, input_shape):
    shape = init.build_sequence([self.stem_pad, self.stem_conv, self.stem_bn],
                               tuple(input_shape))
    for block in self.blocks:
      block.build(shape)
      shape = block.compute_output_shape(shape)
    init.build_sequence([self.head_bn, self.head_relu, self.global_pool,
                        self.classifier], shape)
    self.built = True

  def block_output_shapes(self, input_shape) -> List[tuple]:
    """The output shape of every block for images of `input_shape`."""
    batch, height, width, _ = input_shape
    shape = (batch, height, width, self.stem_conv.filters)
    shapes = []
    for block in self.blocks:
      shape = tuple(block.compute_output_shape(shape))
      shapes.append(shape)
    return shapes

  def _forward(self, images, training, gate_offsets=None, drop_prob=None):
    x = self.stem_bn(self.stem_conv(self.stem_pad(images)), training=training)
    for index, block in enumerate(self.blocks):
      offsets = None if gate_offsets is None else gate_offsets[index]
      x = block(x, gate_offsets=offsets, drop_prob=drop_prob, training=training)
    x = self.global_pool(self.head_relu(self.head_bn(x, training=training)))
    return self.classifier(x)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.classifier.units)


def as_tree_genotype(genotype) -> TreeGenotype:
  """A `TreeGenotype`, its dict, a built-in name or a genotype.json path."""
  if isinstance(genotype, TreeGenotype):
    return genotype
  if isinstance(genotype, dict):
    return TreeGenotype.from_dict(genotype)
  if isinstance(genotype, (str, os.PathLike)):
    from bayesnas_tf.spaces import registry  # pylint: disable=g-import-not-at-top
    resolved = registry.resolve_genotype(genotype)
    if isinstance(resolved, TreeGenotype):
      return resolved
  raise ValueError(
      f"`genotype` must be a pyramid_tree genotype (TreeGenotype, its dict, a "
      f"built-in name or a genotype.json path). Received: genotype={genotype!r}.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PyramidTreeNet(_PyramidBackboneModel):
  """The derived network of a pyramid_tree genotype (retrain and export).

  Args:
    genotype: a `TreeGenotype`, its dict, a built-in name or a path.
    num_classes: classifier outputs.

  `call(images, training=None, return_auxiliary=False)` returns the logits,
  or `(logits, None)` with `return_auxiliary=True` (the trainer's interface;
  there is no auxiliary head). The path-drop probability is one shared
  non-trainable variable (`set_drop_prob`), applied to every node branch of
  every cell in training.
  """

  def __init__(self, genotype, num_classes: int = 10, **kwargs):
    super().__init__(**kwargs)
    self.genotype = as_tree_genotype(genotype)
    self.num_classes = num_classes
    backbone = self.genotype.backbone
    cells = [None if spec is None else TreeCell(spec, width, stride, name="cell",
                                                dtype=self.dtype_policy)
             for spec, width, stride in zip(self.genotype.cells, backbone.widths,
                                            backbone.strides)]
    self.drop_prob = self.add_weight(
        name="drop_prob", shape=(), initializer="zeros", trainable=False,
        dtype="float32", autocast=False)
    self._make_backbone(num_classes, backbone.start_planes, backbone.widths,
                        backbone.strides, cells)

  def call(self, images, training=None, return_auxiliary=False):
    logits = self._forward(images, training, drop_prob=self.drop_prob.value)
    return (logits, None) if return_auxiliary else logits

  def set_drop_prob(self, p: float) -> None:
    if not 0.0 <= float(p) < 1.0:
      raise ValueError(f"`p` must be in [0, 1). Received: p={p!r}.")
    self.drop_prob.assign(float(p))

  def get_config(self):
    config = super().get_config()
    config.update({"genotype": self.genotype.to_dict(),
                   "num_classes": self.num_classes})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PyramidTreeSuperNet(GatedCells, _PyramidBackboneModel):
  """The search network of a tree search space.

  Args:
    num_classes: classifier outputs.
    search_space: "treecell_a" or "proxyless" (`space.TREE_SPACES`).
    depth_blocks: B, blocks per stage (3B blocks).
    alpha: the PyramidNet widening.
    start_planes: the stem width.

  `call(images, training=None, gate_offsets=None)`: `gate_offsets` is None
  or one (batch, E, G) tensor per block.
  """

  def __init__(self, num_classes: int = 10, search_space: str = "treecell_a",
               depth_blocks: int = 18, alpha: float = 84.0,
               start_planes: int = START_PLANES, **kwargs):
    super().__init__(**kwargs)
    self.space = get_tree_space(search_space)
    self.search_space = search_space
    self.num_classes = num_classes
    self.depth_blocks = depth_blocks
    self.alpha = float(alpha)
    self.start_planes = start_planes
    widths = pyramid_widths(depth_blocks, self.alpha, start_planes)
    strides = block_strides(depth_blocks)
    self.cells: List[TreeCell] = [
        TreeCell(self.space.template, width, stride, self.space.gate_kind,
                 self.space.fixed_edges, name="cell", dtype=self.dtype_policy)
        for width, stride in zip(widths, strides)]
    self.cell_types: List[str] = [block_name(i) for i in range(len(widths))]
    self.backbone = PyramidBackbone(depth_blocks, self.alpha, start_planes)
    self._make_backbone(num_classes, start_planes, widths, strides, self.cells)

  def call(self, images, training=None, gate_offsets=None):
    return self._forward(images, training, gate_offsets=gate_offsets)

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes,
                   "search_space": self.search_space,
                   "depth_blocks": self.depth_blocks, "alpha": self.alpha,
                   "start_planes": self.start_planes})
    return config
