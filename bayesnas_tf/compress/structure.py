"""The structure a CNN exposes to Bayesian structured pruning (ALGORITHM.md 7).

A compressible model is a chain: every layer feeds the next and nothing
else. Its *weighted* layers (Conv2D, Dense) hold the kernels that carry
groups; every weighted layer except the last (which makes the logits) is
*prunable*: its output units (conv filters, dense units) can be removed.

Groups (Wen et al. 2016, Fig. 2 of the paper), one gamma each:
  * filter-wise: W_L[..., j], everything that computes unit j of layer L;
    when a BatchNormalization follows L, the unit's BN scale and shift
    (gamma_j, beta_j) instead: BN makes the unit's output independent of the
    scale of W_L[..., j], so a lasso on that kernel slice would shrink it
    without effect (and raise the effective learning rate), while
    (gamma_j, beta_j) -> 0 silences the unit exactly;
  * channel-wise: the weights of the next weighted layer that read unit j
    (for a Dense layer after Flatten, the rows (h, w, j) for all h, w);
  * shape-wise (option): W_L[i, k, c, :] of a conv kernel, one kernel
    position of one input channel across all filters.
A unit is removed when any of its filter or channel groups is pruned.

Removed units are masked on the layer's *output*, after its BN, activation,
pooling and dropout, just before the next weighted layer (or Flatten) reads
them. There a zero channel contributes exactly nothing, so the masked model
and the physically slimmed model (`slim_model`) compute the same function;
masking the kernel alone would leave relu(beta) of a removed BN channel
flowing on.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.config import GROUPINGS
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.nn import PACKAGE

GROUP_KINDS = GROUPINGS

_WEIGHTED = (keras.layers.Conv2D, keras.layers.Dense)
# Layers that act per channel (or not at all) and keep the channel count.
_CHANNELWISE = (keras.layers.BatchNormalization, keras.layers.MaxPooling2D,
                keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
                keras.layers.GlobalMaxPooling2D, keras.layers.ReLU,
                keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.Activation,
                keras.layers.Dropout, keras.layers.SpatialDropout2D)
_FLATTEN = (keras.layers.Flatten,)
_SOFTMAX = (keras.layers.Softmax,)


class UnsupportedModelError(ConfigError):
  """The model is not a chain of the layer kinds the compressor handles."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class KernelMask(keras.constraints.Constraint):
  """Keeps shape-pruned kernel entries at zero (applied after each update)."""

  def __init__(self, mask):
    self.mask = np.asarray(mask, dtype=np.float32)
    if not np.all((self.mask == 0) | (self.mask == 1)):
      raise ValueError("KernelMask needs a 0/1 mask")

  def __call__(self, w):
    return w * tf.cast(self.mask, w.dtype)

  def get_config(self):
    return {"mask": self.mask.tolist()}


def _is_softmax_activation(activation) -> bool:
  return getattr(activation, "__name__", "") == "softmax"


def _takes_training(layer) -> bool:
  return "training" in inspect.signature(layer.call).parameters


@dataclasses.dataclass(frozen=True)
class GroupSet:
  """One kind of group on one kernel, as a (groups, members) view.

  The kernel is reshaped to `pre_shape`, transposed by `perm` (the group
  axis first) and flattened to (num_groups, group_size).
  """
  name: str
  kind: str
  layer_index: int             # the weighted layer whose kernel holds it
  unit_layer: Optional[int]    # prunable layer whose units it is (not shape)
  kernel_shape: Tuple[int, ...]
  pre_shape: Tuple[int, ...]
  perm: Tuple[int, ...]

  @property
  def num_groups(self) -> int:
    return self.pre_shape[self.perm[0]]

  @property
  def group_size(self) -> int:
    return int(np.prod(self.kernel_shape)) // self.num_groups

  def view(self, kernel):
    """kernel -> (num_groups, group_size)."""
    x = tf.reshape(kernel, self.pre_shape)
    return tf.reshape(tf.transpose(x, self.perm), (self.num_groups, -1))

  def unview(self, values):
    """(num_groups, group_size) -> kernel shape; the inverse of `view`."""
    transposed = [self.pre_shape[p] for p in self.perm]
    x = tf.reshape(values, transposed)
    return tf.reshape(tf.transpose(x, np.argsort(self.perm)), self.kernel_shape)


class CNNChain:
  """A Keras chain CNN, analysed for structured pruning.

  Raises UnsupportedModelError naming every layer it cannot handle.
  """

  def __init__(self, model: keras.Model):
    self.model = model
    self.layers = self._ordered_layers(model)
    unsupported = [f"{layer.name} ({type(layer).__name__})" for layer in self.layers
                   if not isinstance(layer, _WEIGHTED + _CHANNELWISE + _FLATTEN + _SOFTMAX)]
    if unsupported:
      raise UnsupportedModelError(
          "cannot compress this model: unsupported layer(s) "
          f"{', '.join(unsupported)}; --mode=compress handles chains of Conv2D, "
          "Dense, BatchNormalization, pooling, Flatten, activation and dropout layers")
    self._check_layer_options()
    self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    self.weighted = [i for i, layer in enumerate(self.layers)
                     if isinstance(layer, _WEIGHTED)]
    if len(self.weighted) < 2:
      raise UnsupportedModelError(
          "cannot compress this model: it needs at least two Conv2D/Dense layers "
          "(the last one makes the logits and keeps its units)")
    self.prunable = self.weighted[:-1]
    self.final = self.weighted[-1]
    self.strip_softmax = self._find_softmax()
    self._shapes = self._trace_shapes()
    self.consumer: Dict[int, int] = {}
    self.mask_position: Dict[int, int] = {}
    self.flatten_spatial: Dict[int, int] = {}
    for p, c in zip(self.weighted[:-1], self.weighted[1:]):
      self.consumer[p] = c
      flatten = [i for i in range(p + 1, c) if isinstance(self.layers[i], _FLATTEN)]
      self.mask_position[p] = flatten[0] if flatten else c
      if flatten:
        shape = self._shapes[flatten[0] - 1]
        self.flatten_spatial[p] = int(np.prod(shape[:-1]))
      else:
        self.flatten_spatial[p] = 1
    self.producer = {c: p for p, c in self.consumer.items()}
    # The BN (with scale and center) that normalises each prunable layer's
    # units, if any: its (gamma, beta) are that unit's filter group.
    self.bn_after: Dict[int, int] = {}
    for p in self.prunable:
      for i in range(p + 1, self.mask_position[p]):
        layer = self.layers[i]
        if isinstance(layer, keras.layers.BatchNormalization):
          if layer.scale and layer.center:
            self.bn_after[p] = i
          break

  # --- analysis -------------------------------------------------------------
  @staticmethod
  def _ordered_layers(model) -> List[keras.layers.Layer]:
    if not isinstance(model, keras.Model) or not model.built:
      raise UnsupportedModelError("cannot compress: expected a built Keras model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
      raise UnsupportedModelError(
          "cannot compress this model: it must have one input and one output")
    layers = [layer for layer in model.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
      return layers
    previous = model.inputs[0]._keras_history.operation
    for layer in layers:
      nodes = [n for n in layer._inbound_nodes if n.parent_nodes]
      parents = nodes[0].parent_nodes if len(nodes) == 1 else []
      if len(nodes) != 1 or len(parents) != 1 or parents[0].operation is not previous:
        raise UnsupportedModelError(
            f"cannot compress this model: layer {layer.name} does not simply feed "
            "on the layer before it (branches, merges and shared layers are not "
            "supported)")
      previous = layer
    return layers

  def _check_layer_options(self) -> None:
    for layer in self.layers:
      if isinstance(layer, keras.layers.Conv2D):
        if layer.data_format != "channels_last" or layer.groups != 1:
          raise UnsupportedModelError(
              f"cannot compress layer {layer.name}: only channels_last Conv2D "
              "with groups=1 is supported")
      if isinstance(layer, keras.layers.BatchNormalization) and layer.axis not in (-1, 3):
        raise UnsupportedModelError(
            f"cannot compress layer {layer.name}: BatchNormalization must "
            "normalise the last (channel) axis")
      if isinstance(layer, keras.layers.Activation) and _is_softmax_activation(
          layer.activation) and layer is not self.layers[-1]:
        raise UnsupportedModelError(
            f"cannot compress layer {layer.name}: softmax is only supported at the end")

  def _find_softmax(self) -> bool:
    """True when the model ends in softmax; the compressor works on logits."""
    last = self.layers[-1]
    if isinstance(last, _SOFTMAX) or (isinstance(last, keras.layers.Activation)
                                      and _is_softmax_activation(last.activation)):
      return True
    return _is_softmax_activation(getattr(self.layers[self.final], "activation", None))

  def _trace_shapes(self) -> List[Tuple[int, ...]]:
    x = tf.zeros((1,) + self.input_shape)
    shapes = []
    for layer in self.layers:
      x = layer(x)
      shapes.append(tuple(int(d) for d in x.shape[1:]))
    return shapes

  def output_shape(self, index: int) -> Tuple[int, ...]:
    return self._shapes[index]

  def units(self, index: int) -> int:
    layer = self.layers[index]
    return int(layer.filters if isinstance(layer, keras.layers.Conv2D) else layer.units)

  def is_conv(self, index: int) -> bool:
    return isinstance(self.layers[index], keras.layers.Conv2D)

  def kernel(self, index: int):
    return self.layers[index].kernel

  def is_batch_norm(self, index: int) -> bool:
    return isinstance(self.layers[index], keras.layers.BatchNormalization)

  def group_tensor(self, index: int):
    """What the groups of layer `index` are cut from: a kernel, or a BN's
    (2, units) stack of gamma and beta."""
    layer = self.layers[index]
    if self.is_batch_norm(index):
      return tf.stack([tf.convert_to_tensor(layer.gamma), tf.convert_to_tensor(layer.beta)])
    return layer.kernel

  def group_tensor_shape(self, index: int) -> Tuple[int, ...]:
    if self.is_batch_norm(index):
      return (2, int(self.layers[index].gamma.shape[0]))
    return tuple(int(d) for d in self.kernel(index).shape)

  # --- groups ---------------------------------------------------------------
  def group_sets(self, kinds: Sequence[str]) -> List[GroupSet]:
    for kind in kinds:
      if kind not in GROUP_KINDS:
        raise ConfigError(f"unknown group kind {kind!r}; valid: {', '.join(GROUP_KINDS)}")
    result = []
    for p in self.prunable:
      shape = tuple(int(d) for d in self.kernel(p).shape)
      if "filter" in kinds and p in self.bn_after:
        # BN (gamma, beta) stacked as (2, units): group j = [:, j].
        bn = self.bn_after[p]
        result.append(GroupSet(f"{self.layers[p].name}/filter", "filter", bn, p,
                               self.group_tensor_shape(bn),
                               self.group_tensor_shape(bn), (1, 0)))
      elif "filter" in kinds:
        # Conv (kh, kw, cin, cout) / Dense (in, out): group j = [..., j].
        result.append(GroupSet(f"{self.layers[p].name}/filter", "filter", p, p, shape,
                               (int(np.prod(shape[:-1])), shape[-1]), (1, 0)))
      if "channel" in kinds:
        c = self.consumer[p]
        c_shape = tuple(int(d) for d in self.kernel(c).shape)
        units = self.units(p)
        # Conv consumer (kh*kw, cin, cout); Dense consumer after Flatten of
        # (H, W, C): row index (h*W + w)*C + c, i.e. (H*W, C, out).
        outer = int(np.prod(c_shape[:-2])) if self.is_conv(c) else self.flatten_spatial[p]
        result.append(GroupSet(f"{self.layers[p].name}/channel", "channel", c, p, c_shape,
                               (outer, units, c_shape[-1]), (1, 0, 2)))
    if "shape" in kinds:
      for w in self.weighted:
        if self.is_conv(w):
          shape = tuple(int(d) for d in self.kernel(w).shape)
          result.append(GroupSet(f"{self.layers[w].name}/shape", "shape", w, None, shape,
                                 (int(np.prod(shape[:-1])), shape[-1]), (0, 1)))
    return result

  # --- masks ----------------------------------------------------------------
  def kernel_mask(self, index: int, unit_masks: Dict[int, np.ndarray],
                  shape_masks: Dict[int, np.ndarray]) -> np.ndarray:
    """0/1 mask of layer `index`'s kernel: its removed units (last axis),
    the removed units of the layer feeding it (input rows) and its pruned
    shape groups."""
    shape = tuple(int(d) for d in self.kernel(index).shape)
    mask = np.ones(shape, np.float32)
    if index in unit_masks:
      mask = mask * unit_masks[index]
    if index in self.producer:
      p = self.producer[index]
      rows = unit_masks[p]
      if self.is_conv(index):
        mask = mask * rows[:, np.newaxis]
      else:
        mask = mask * np.tile(rows, self.flatten_spatial[p])[:, np.newaxis]
    if index in shape_masks:
      mask = mask * shape_masks[index]
    return mask

  def forward(self, x, training: bool = False,
              unit_masks: Optional[Dict[int, tf.Tensor]] = None,
              taps: Optional[Dict[int, tuple]] = None):
    """The model's logits, with `unit_masks` (prunable index -> (units,))
    applied where each layer's units are read.

    With a `taps` dict, each weighted layer is computed here (the same ops
    as its `call`) and taps[index] = (input, kernel output before bias) is
    recorded, for per-example gradients (weight_hessian.py); so is each BN
    of `bn_after` (inference mode): taps[index] = (normalised input, output).
    """
    tapped_bns = set(self.bn_after.values()) if taps is not None else set()
    masks_at = {}
    if unit_masks is not None:
      masks_at = {self.mask_position[p]: m for p, m in unit_masks.items()}
    for index, layer in enumerate(self.layers):
      if index in masks_at:
        x = x * tf.cast(masks_at[index], x.dtype)
      if index > self.final:
        break  # Only a trailing softmax follows the logits.
      if index in self.weighted and (taps is not None or (
          index == self.final and self.strip_softmax)):
        linear = self.linear(index, x)
        if taps is not None:
          taps[index] = (x, linear)
        x = linear
        if layer.use_bias:
          x = x + tf.cast(layer.bias, x.dtype)
        if not (index == self.final and self.strip_softmax):
          x = layer.activation(x)
        continue
      if index in tapped_bns:
        normalised = (x - tf.cast(layer.moving_mean, x.dtype)) * tf.math.rsqrt(
            tf.cast(layer.moving_variance, x.dtype) + layer.epsilon)
        x = normalised * tf.cast(layer.gamma, x.dtype) + tf.cast(layer.beta, x.dtype)
        taps[index] = (normalised, x)
        continue
      x = layer(x, training=training) if _takes_training(layer) else layer(x)
    return x

  def linear(self, index: int, x):
    """Layer `index`'s kernel applied to x (no bias or activation)."""
    layer = self.layers[index]
    kernel = tf.cast(layer.kernel, x.dtype)
    if self.is_conv(index):
      return keras.ops.conv(x, kernel, strides=layer.strides, padding=layer.padding,
                            data_format="channels_last",
                            dilation_rate=layer.dilation_rate)
    return keras.ops.matmul(x, kernel)


def keep_at_least_one(layer_name: str, kept: np.ndarray,
                      scores: np.ndarray) -> np.ndarray:
  """Never removes every unit of a layer: keeps the best-scoring one, warns."""
  if kept.any():
    return kept
  best = int(np.argmax(scores))
  logging.warning(
      "pruning would remove every unit of layer %s; keeping unit %d (the largest "
      "gamma) so the network stays connected. A smaller --lambda_group or "
      "--prune_threshold removes less.", layer_name, best)
  kept = kept.copy()
  kept[best] = True
  return kept


def count_params_and_macs(chain: CNNChain,
                          unit_masks: Optional[Dict[int, np.ndarray]] = None,
                          shape_masks: Optional[Dict[int, np.ndarray]] = None
                          ) -> Tuple[int, int]:
  """Trainable parameters and multiply-accumulates of one example.

  Units removed by `unit_masks` and kernel entries zeroed by shape masks (or
  by a `KernelMask` constraint) do not count. MACs are those of the conv
  and dense layers.
  """
  unit_masks = unit_masks or {p: np.ones(chain.units(p), np.float32)
                              for p in chain.prunable}
  shape_masks = dict(shape_masks or {})
  for w in chain.weighted:
    constraint = getattr(chain.layers[w], "kernel_constraint", None)
    if isinstance(constraint, KernelMask) and w not in shape_masks:
      shape_masks[w] = constraint.mask
  params = macs = 0
  channels = chain.input_shape[-1]
  channel_mask = np.ones(channels, np.float32)
  for index, layer in enumerate(chain.layers):
    if index in chain.weighted:
      kernel_mask = chain.kernel_mask(index, unit_masks, shape_masks)
      entries = int(kernel_mask.sum())
      out_units = unit_masks.get(index, np.ones(chain.units(index)))
      positions = int(np.prod(chain.output_shape(index)[:-1])) if chain.is_conv(index) else 1
      params += entries + (int(out_units.sum()) if layer.use_bias else 0)
      macs += entries * positions
      channel_mask = out_units
    elif isinstance(layer, keras.layers.BatchNormalization):
      per_channel = int(layer.scale) + int(layer.center)
      params += per_channel * int(channel_mask.sum())
  return params, macs


def slim_model(chain: CNNChain, unit_masks: Dict[int, np.ndarray],
               shape_masks: Optional[Dict[int, np.ndarray]] = None,
               name: Optional[str] = None) -> keras.Model:
  """A new functional model without the removed units, weights copied.

  Its logits equal `chain.forward(x, unit_masks=...)` (the module doc says
  why); a trailing softmax is dropped, so it returns logits. Shape-pruned
  kernel entries stay zero through a `KernelMask` constraint.
  """
  shape_masks = shape_masks or {}
  keep = {p: np.flatnonzero(np.asarray(unit_masks[p]) > 0) for p in chain.prunable}
  inputs = keras.Input(chain.input_shape, name="images")
  x = inputs
  channel_keep = np.arange(chain.input_shape[-1])
  copies = []
  for index, layer in enumerate(chain.layers):
    if index > chain.final:
      break
    config = layer.get_config()
    if index in chain.weighted:
      out_keep = keep.get(index, np.arange(chain.units(index)))
      kernel = layer.kernel.numpy()
      if chain.is_conv(index):
        config["filters"] = len(out_keep)
        rows = channel_keep
        kernel = kernel[:, :, rows][..., out_keep]
      else:
        config["units"] = len(out_keep)
        if index in chain.producer and chain.flatten_spatial[chain.producer[index]] > 1:
          spatial = chain.flatten_spatial[chain.producer[index]]
          width = kernel.shape[0] // spatial
          rows = (np.arange(spatial)[:, None] * width + channel_keep[None, :]).ravel()
        else:
          rows = channel_keep
        kernel = kernel[rows][:, out_keep]
      if index == chain.final and chain.strip_softmax:
        config["activation"] = "linear"
      if index in shape_masks:
        mask = np.asarray(shape_masks[index])
        mask = mask[:, :, rows][..., out_keep] if chain.is_conv(index) else mask[rows][:, out_keep]
        config["kernel_constraint"] = keras.saving.serialize_keras_object(KernelMask(mask))
        kernel = kernel * mask
      new_layer = type(layer).from_config(config)
      weights = [kernel]
      if layer.use_bias:
        weights.append(layer.bias.numpy()[out_keep])
      channel_keep = out_keep
    elif isinstance(layer, keras.layers.BatchNormalization):
      new_layer = type(layer).from_config(config)
      weights = [w.numpy()[channel_keep] for w in layer.weights]
    else:
      new_layer = type(layer).from_config(config)
      weights = []
    x = new_layer(x)
    copies.append((new_layer, weights))
  model = keras.Model(inputs, x, name=name or f"{chain.model.name}_slim")
  for new_layer, weights in copies:
    if weights:
      new_layer.set_weights(weights)
  return model
