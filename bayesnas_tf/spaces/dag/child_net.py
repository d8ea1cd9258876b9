"""`ChildNetwork`: the re-train network of a genotype (ALGORITHM.md 5).

CIFAR (5.2): pad 1 + 3x3 conv 3 -> stem_multiplier*C (no bias, no BN), whose
output feeds both inputs of cell 0; `cells` cells with reductions at 1/3 and
2/3 of the depth (20 cells: after normal cells 5 and 11), C doubling at each;
head BN -> global average pool -> dense. There is no ReLU before the pool.

ImageNet (5.3): stem0 = 3x3 conv s2 3 -> C/2, BN, ReLU, 3x3 conv s2 C/2 -> C,
BN (1/4 size, the k-2 input of cell 0); stem1 = ReLU, 3x3 conv s2 C -> C, no
BN (1/8 size, the k-1 input of cell 0). Cell 0 therefore halves its k-2
input as if it followed a reduction cell. Same cells and head otherwise.

Exact trainable parameter counts (ALGORITHM.md 5.2, 6; 9.2 item 13), without
the auxiliary head: CIFAR (20 cells, C=36, 10 classes) `bayesnas_l0.01`
2,575,702, `bayesnas_l0.007` 3,197,350, `bayesnas_l0.005` 2,512,198;
ImageNet (14 cells, C=48, 1000 classes) `bayesnas_imagenet` 4,008,928.

The optional auxiliary head (DARTS; the official code has none) reads the
output of the second reduction cell, index 2*cells//3.
"""

from __future__ import annotations

import os
from typing import List, Tuple

import keras
import tensorflow as tf

from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.nn.batch_norm import BatchNorm
from bayesnas_tf.nn.init import dense_bias_initializer
from bayesnas_tf.spaces.dag.child_cell import ChildCell
from bayesnas_tf.spaces.dag.child_cell import DROP_PATHS
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.space import reduction_positions

VARIANTS = ("cifar", "imagenet")
AUX_CHANNELS = (128, 768)  # DARTS's auxiliary head widths.


def _stem_conv(filters: int, stride: int, name: str,
               dtype=None) -> keras.layers.Conv2D:
  # Used after an explicit ZeroPadding2D(1) (ALGORITHM.md 9.1).
  return keras.layers.Conv2D(
      filters, 3, strides=stride, padding="valid", use_bias=False,
      kernel_initializer=init.conv_initializer(), name=name, dtype=dtype)


def _classifier(num_classes: int, fan_in: int, name: str,
                dtype=None) -> keras.layers.Dense:
  # PyTorch Linear init (ALGORITHM.md 9.1).
  return keras.layers.Dense(
      num_classes, kernel_initializer=init.conv_initializer(),
      bias_initializer=dense_bias_initializer(fan_in), name=name, dtype=dtype)


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(
        f"`{name}` must be an integer >= {minimum}. Received: "
        f"{name}={value!r}.")


def as_genotype(genotype) -> Genotype:
  """A `Genotype`, its dict (JSON form), a built-in name or a path."""
  if isinstance(genotype, Genotype):
    return genotype
  if isinstance(genotype, dict):
    return Genotype.from_dict(genotype)
  if isinstance(genotype, (str, os.PathLike)):
    from bayesnas_tf.spaces import registry  # pylint: disable=g-import-not-at-top
    resolved = registry.resolve_genotype(genotype)
    if isinstance(resolved, Genotype):
      return resolved
  raise ValueError(
      f"`genotype` must be a Genotype, its dict, a built-in name or a "
      f"genotype.json path. Received: genotype={genotype!r}.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class AuxiliaryHead(keras.layers.Layer):
  """DARTS's auxiliary classifier (trainers weight its loss, e.g. 0.4).

  CIFAR: ReLU -> AvgPool 5 stride 3 -> 1x1 conv 128 -> BN -> ReLU -> 2x2 conv
  768 -> BN -> ReLU -> dense. ImageNet: the same with AvgPool 5 stride 2 and
  no BN after the 2x2 conv (DARTS's AuxiliaryHeadImageNet). Convs have no
  bias. At the paper's sizes (8x8 and 7x7 inputs) the 2x2 conv output is 1x1
  and the final global average is DARTS's flatten. For the small networks
  used on a CPU the pool window shrinks to the feature size and the pooled
  map is zero-padded to 2x2, so any input size works with the same weights.

  Args:
    num_classes: classifier outputs.
    variant: "cifar" or "imagenet".
  """

  def __init__(self, num_classes: int, variant: str = "cifar", **kwargs):
    super().__init__(**kwargs)
    _check_int("num_classes", num_classes, 2)
    if variant not in VARIANTS:
      raise ValueError(
          f"`variant` must be one of {VARIANTS}. Received: "
          f"variant={variant!r}.")
    self.num_classes = num_classes
    self.variant = variant
    self.pool_stride = 3 if variant == "cifar" else 2
    hidden, features = AUX_CHANNELS
    # Sublayers take the head's dtype policy (Keras 3 does not pass it on).
    policy = self.dtype_policy
    self.relu0 = keras.layers.ReLU(name="relu0", dtype=policy)
    self.conv1 = init.conv1x1(hidden, 1, "conv1", policy)
    self.bn1 = init.batch_norm("bn1", policy)
    self.relu1 = keras.layers.ReLU(name="relu1", dtype=policy)
    self.conv2 = keras.layers.Conv2D(
        features, 2, padding="valid", use_bias=False,
        kernel_initializer=init.conv_initializer(), name="conv2", dtype=policy)
    self.bn2 = init.batch_norm("bn2", policy) if variant == "cifar" else None
    self.relu2 = keras.layers.ReLU(name="relu2", dtype=policy)
    self.classifier = _classifier(num_classes, features, "classifier", policy)

  def build(self, input_shape):
    batch = input_shape[0]
    hidden, features = AUX_CHANNELS
    self.conv1.build((batch, None, None, input_shape[-1]))
    self.bn1.build((batch, None, None, hidden))
    self.conv2.build((batch, None, None, hidden))
    if self.bn2 is not None:
      self.bn2.build((batch, None, None, features))
    self.classifier.build((batch, features))
    self.built = True

  def call(self, inputs, training=None):
    x = self.relu0(inputs)
    height, width = x.shape[1], x.shape[2]
    window = [min(5, s) if s is not None else 5 for s in (height, width)]
    x = tf.nn.avg_pool2d(x, window, self.pool_stride, "VALID")
    x = self.relu1(self.bn1(self.conv1(x), training=training))
    pad = [max(0, 2 - s) if s is not None else 0 for s in x.shape[1:3]]
    if any(pad):
      x = tf.pad(x, [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]])
    x = self.conv2(x)
    if self.bn2 is not None:
      x = self.bn2(x, training=training)
    x = tf.reduce_mean(self.relu2(x), axis=[1, 2])
    return self.classifier(x)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes, "variant": self.variant})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChildNetwork(keras.Model):
  """The re-train network of a genotype.

  Args:
    genotype: a `Genotype`, its dict (`to_dict()`), a built-in name or a
      genotype.json path. Its `size_reduct` picks the CReduct variant.
    num_classes: classifier outputs (>= 2).
    cells: number of cells (>= 3); reductions at cells//3 and 2*cells//3.
    channels: C of the first cells (>= 2).
    variant: "cifar" (stem at full size) or "imagenet" (stride-8 stem).
    drop_path: "official" (per-op channel dropout) or "darts" (per-example
      path drop); its probability is `drop_prob`, 0 until `set_drop_prob`.
    auxiliary: whether to build DARTS's auxiliary head.
    stem_multiplier: CIFAR stem width = stem_multiplier * C (unused by the
      ImageNet stem, whose width is C).
    auxiliary_weight: the weight of the auxiliary head's loss in
      `model.fit` (DARTS: 0.4).

  `call(images, training=None, return_auxiliary=False)` returns the logits,
  or `(logits, aux_logits)` with `return_auxiliary=True` (`aux_logits` is
  None without an auxiliary head). Images are already normalised; any number
  of input channels works.

  It is an ordinary Keras model: `compile()` it with a loss on logits (e.g.
  `SparseCategoricalCrossentropy(from_logits=True)`), `fit()` it with any
  callbacks, `evaluate()`, `save("x.keras")`, `export()`. As in our own
  trainer, `fit` adds `auxiliary_weight` x the compiled loss of the
  auxiliary logits when the head exists, drop path acts in training only,
  and `training.callbacks.DropPathSchedule` ramps its probability over the epochs.
  """

  def __init__(self, genotype, num_classes: int = 10, cells: int = 20,
               channels: int = 36, variant: str = "cifar",
               drop_path: str = "official", auxiliary: bool = False,
               stem_multiplier: int = 3, auxiliary_weight: float = 0.4,
               **kwargs):
    super().__init__(**kwargs)
    genotype = as_genotype(genotype)
    _check_int("num_classes", num_classes, 2)
    _check_int("cells", cells, 3)
    _check_int("channels", channels, 2)
    _check_int("stem_multiplier", stem_multiplier, 1)
    if variant not in VARIANTS:
      raise ValueError(
          f"`variant` must be one of {VARIANTS}. Received: "
          f"variant={variant!r}.")
    if drop_path not in DROP_PATHS:
      raise ValueError(
          f"`drop_path` must be one of {DROP_PATHS}. Received: "
          f"drop_path={drop_path!r}.")
    if not isinstance(auxiliary, bool):
      raise ValueError(
          f"`auxiliary` must be a bool. Received: auxiliary={auxiliary!r}.")
    if isinstance(auxiliary_weight, bool) or not isinstance(
        auxiliary_weight, (int, float)) or not auxiliary_weight >= 0:
      raise ValueError(
          f"`auxiliary_weight` must be a number >= 0. Received: "
          f"auxiliary_weight={auxiliary_weight!r}.")
    self.genotype = genotype
    self.num_classes = num_classes
    self.num_cells = cells
    self.channels = channels
    self.variant = variant
    self.drop_path = drop_path
    self.auxiliary = auxiliary
    self.stem_multiplier = stem_multiplier
    self.auxiliary_weight = float(auxiliary_weight)
    self.num_nodes = genotype.num_nodes
    self.reductions = reduction_positions(cells)
    # DARTS attaches the auxiliary head to the cell at 2*cells//3, which is
    # the second reduction cell.
    self.auxiliary_index = self.reductions[1]

    # One variable shared by every cell (passed to each call), so changing it
    # per epoch needs no re-tracing.
    self.drop_prob = self.add_weight(
        name="drop_prob", shape=(), initializer="zeros", trainable=False,
        dtype="float32", autocast=False)

    # Sublayers take the network's dtype policy (Keras 3 does not pass it on).
    policy = self.dtype_policy
    if variant == "cifar":
      self.stem0 = [keras.layers.ZeroPadding2D(1, name="stem_pad", dtype=policy),
                    _stem_conv(stem_multiplier * channels, 1, "stem_conv", policy)]
      self.stem1 = []
    else:
      half = channels // 2
      self.stem0 = [
          keras.layers.ZeroPadding2D(1, name="stem0_pad1", dtype=policy),
          _stem_conv(half, 2, "stem0_conv1", policy),
          init.batch_norm("stem0_bn1", policy),
          keras.layers.ReLU(name="stem0_relu", dtype=policy),
          keras.layers.ZeroPadding2D(1, name="stem0_pad2", dtype=policy),
          _stem_conv(channels, 2, "stem0_conv2", policy),
          init.batch_norm("stem0_bn2", policy),
      ]
      self.stem1 = [
          keras.layers.ReLU(name="stem1_relu", dtype=policy),
          keras.layers.ZeroPadding2D(1, name="stem1_pad", dtype=policy),
          _stem_conv(channels, 2, "stem1_conv", policy),
      ]

    self.cells: List[ChildCell] = []
    c = channels
    # The ImageNet stem hands cell 0 a k-2 input at twice the size of its k-1
    # input, exactly as a reduction cell would (ALGORITHM.md 5.3).
    reduction_prev = variant == "imagenet"
    for index in range(cells):
      reduction = index in self.reductions
      if reduction:
        c *= 2
      cell_type = "reduce" if reduction else "normal"
      self.cells.append(ChildCell(
          genotype.cell(cell_type), c, reduction, reduction_prev,
          size_reduct=genotype.size_reduct, drop_path=drop_path,
          name=f"cell_{index}_{cell_type}", dtype=policy))
      reduction_prev = reduction
    self.final_channels = self.num_nodes * c
    # No ReLU before the pool (ALGORITHM.md 5.2, unlike the search net).
    self.head_bn = init.batch_norm("head_bn", policy)
    self.global_pool = keras.layers.GlobalAveragePooling2D(name="global_pool",
                                                           dtype=policy)
    self.classifier = _classifier(num_classes, self.final_channels,
                                  "classifier", policy)
    self.auxiliary_head = (
        AuxiliaryHead(num_classes, variant, name="auxiliary_head", dtype=policy)
        if auxiliary else None)

  # --- shapes -------------------------------------------------------------
  def _stem_shapes(self, input_shape) -> Tuple[tuple, tuple]:
    """(k-2 input, k-1 input) shapes of cell 0."""
    batch, height, width, _ = input_shape
    if self.variant == "cifar":
      shape = (batch, height, width, self.stem_multiplier * self.channels)
      return shape, shape
    quarter = [init.strided_size(init.strided_size(s, 2), 2)
               for s in (height, width)]
    eighth = [init.strided_size(s, 2) for s in quarter]
    return ((batch, *quarter, self.channels), (batch, *eighth, self.channels))

  def cell_output_shapes(self, input_shape) -> List[tuple]:
    """The output shape of every cell for images of `input_shape`."""
    prev_prev, prev = self._stem_shapes(tuple(input_shape))
    shapes = []
    for cell in self.cells:
      prev_prev, prev = prev, cell.compute_output_shape(prev, prev_prev)
      shapes.append(prev)
    return shapes

  def feature_shape(self, input_shape) -> tuple:
    """The shape of the last cell's output (the head's input)."""
    return self.cell_output_shapes(input_shape)[-1]

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_classes)

  # --- building -------------------------------------------------------------
  def build(self, input_shape):
    input_shape = tuple(input_shape)
    prev_prev = init.build_sequence(self.stem0, input_shape)
    prev = init.build_sequence(self.stem1, prev_prev) if self.stem1 else (
        prev_prev)
    for index, cell in enumerate(self.cells):
      cell.build(prev, prev_prev)
      prev_prev, prev = prev, cell.compute_output_shape(prev, prev_prev)
      if index == self.auxiliary_index and self.auxiliary_head is not None:
        self.auxiliary_head.build(prev)
    init.build_sequence([self.head_bn, self.global_pool, self.classifier], prev)
    self.built = True

  def call(self, images, training=None, return_auxiliary=False):
    x = images
    for layer in self.stem0:
      x = (layer(x, training=training) if isinstance(layer, BatchNorm)
           else layer(x))
    prev_prev = x
    for layer in self.stem1:
      x = layer(x)
    prev = x
    drop_prob = self.drop_prob.value
    aux_logits = None
    for index, cell in enumerate(self.cells):
      prev_prev, prev = prev, cell(prev, prev_prev, drop_prob=drop_prob,
                                   training=training)
      if (index == self.auxiliary_index and return_auxiliary
          and self.auxiliary_head is not None):
        aux_logits = self.auxiliary_head(prev, training=training)
    x = self.global_pool(self.head_bn(prev, training=training))
    logits = self.classifier(x)
    if return_auxiliary:
      return logits, aux_logits
    return logits

  # --- drop path ------------------------------------------------------------
  def set_drop_prob(self, p: float) -> None:
    """Sets the drop-path probability of every op (e.g. 0.2*epoch/epochs)."""
    if not 0.0 <= float(p) < 1.0:
      raise ValueError(f"`p` must be in [0, 1). Received: p={p!r}.")
    self.drop_prob.assign(float(p))

  @property
  def main_variables(self) -> List[tf.Variable]:
    """Trainable variables of the network without the auxiliary head."""
    if self.auxiliary_head is None:
      return list(self.trainable_variables)
    aux = {id(v) for v in self.auxiliary_head.trainable_variables}
    return [v for v in self.trainable_variables if id(v) not in aux]

  def get_config(self):
    config = super().get_config()
    config.update({
        "genotype": self.genotype.to_dict(), "num_classes": self.num_classes,
        "cells": self.num_cells, "channels": self.channels,
        "variant": self.variant, "drop_path": self.drop_path,
        "auxiliary": self.auxiliary, "stem_multiplier": self.stem_multiplier,
        "auxiliary_weight": self.auxiliary_weight})
    return config

  # --- model.fit ----------------------------------------------------------------
  def train_step(self, data):
    # Keras's step computes the loss of `self(x)` only; with the auxiliary
    # head the loss also gets auxiliary_weight x the compiled loss of the
    # auxiliary logits, from the same forward pass (the DARTS trainer, and
    # training/train.py). The structure follows Keras's guide to custom train steps.
    if self.auxiliary_head is None:
      return super().train_step(data)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
      logits, aux_logits = self(x, training=True, return_auxiliary=True)
      loss = self.compute_loss(x=x, y=y, y_pred=logits,
                               sample_weight=sample_weight, training=True)
      loss += self.auxiliary_weight * self._auxiliary_loss(
          y, aux_logits, sample_weight)
      scaled = self.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, self.trainable_weights)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
    for metric in self.metrics:
      if metric.name == "loss":
        metric.update_state(loss, sample_weight=tf.shape(x)[0])
    return self.compute_metrics(x, y, logits, sample_weight=sample_weight)

  def _auxiliary_loss(self, y, aux_logits, sample_weight):
    # The compiled loss of the (single) logits output; a loss given by name
    # or as a function is wrapped to reduce it the same way.
    loss = keras.losses.get(self.loss)
    if not isinstance(loss, keras.losses.Loss):
      loss = keras.losses.LossFunctionWrapper(loss)
    return loss(y, tf.cast(aux_logits, tf.float32), sample_weight=sample_weight)
