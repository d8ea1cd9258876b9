"""`--mode=compress --hessian=diag_backprop`: the paper's weight Hessian.

The diagonal Hessian back-propagation of ALGORITHM.md 3.4.2 / 7 (Becker &
LeCun; the paper's App. C.1-C.2) for the kernels of a compressible chain
(`structure.CNNChain`), with the same shadow network as the search's gate
estimator (the rules of nn/diag_rules.py): every linear map runs with squared
coefficients on a shadow activation x' next to the real one, a ReLU passes
x' through its real mask, a max pool through its real argmax. The weight rule

    H_W[k, j] = sum_{b, positions} x_j^2 H_y[k]                 ("x^2 (x) H")

is the gradient, with respect to a dummy kernel E of zeros, of a term
lin(sg(x^2), E) added to each weighted layer's shadow output (lin: the
layer's own conv or matmul; sg: stop_gradient); the BN scale and shift of a
`bn_after` layer get eps_gamma sg(x_hat^2) + eps_beta. One real forward, one
shadow forward and one backward pass give every kernel's diagonal, summed
over the batch; it starts from the full CE diagonal p (1 - p) and drops
every off-diagonal term (positions, channels, logits), so it approximates
the exact GGN diagonal that `ggn` computes.

Only piecewise-linear activations are handled (ReLU, leaky ReLU, linear):
their f'' is 0, so the recursion's D term (ALGORITHM.md 3.4.2) vanishes.
A model with another activation is rejected with a message that names the
layer; `--hessian=ggn` handles it.
"""

from __future__ import annotations

from typing import Dict, Optional

import keras
import tensorflow as tf

from bayesnas_tf.compress.structure import CNNChain
from bayesnas_tf.compress.structure import UnsupportedModelError
from bayesnas_tf.nn import diag_rules


def _unsupported(layer, what: str) -> UnsupportedModelError:
  return UnsupportedModelError(
      f"--hessian=diag_backprop cannot handle layer {layer.name} "
      f"({type(layer).__name__}): {what}; use --hessian=ggn")


# Layers whose rule is in `_shadow_layer` (besides Conv2D, Dense and BN).
_RULES = (keras.layers.Dropout, keras.layers.SpatialDropout2D,
          keras.layers.Flatten, keras.layers.ReLU, keras.layers.LeakyReLU,
          keras.layers.Activation, keras.layers.BatchNormalization,
          keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
          keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def _check_activation(layer, activation) -> str:
  name = getattr(activation, "__name__", "")
  if name not in ("linear", "relu"):
    raise _unsupported(layer, f"activation {name!r} (only relu and linear, "
                       "whose f'' is 0)")
  return name


def check_supported(chain: CNNChain) -> None:
  """Raises UnsupportedModelError, naming the layer, for a chain this
  estimator cannot handle (checked before any training)."""
  for index, layer in enumerate(chain.layers[:chain.final + 1]):
    if index in chain.weighted:
      if not (index == chain.final and chain.strip_softmax):
        _check_activation(layer, layer.activation)
    elif not isinstance(layer, _RULES):
      raise _unsupported(layer, "no diagonal back-propagation rule")
    elif isinstance(layer, keras.layers.ReLU) and (
        layer.max_value is not None or layer.threshold):
      raise _unsupported(layer, "a capped or thresholded ReLU")
    elif isinstance(layer, keras.layers.Activation):
      _check_activation(layer, layer.activation)


def _squared_derivative(layer, activation, pre, dtype) -> tf.Tensor:
  """f'(pre)^2 of a piecewise-linear activation (f'' = 0 everywhere)."""
  if _check_activation(layer, activation) == "linear":
    return tf.ones_like(tf.cast(pre, dtype))
  return tf.cast(pre > 0, dtype)


def _linear(layer, x, kernel):
  """The weighted layer's conv or matmul with another kernel (as
  `CNNChain.linear`)."""
  if isinstance(layer, keras.layers.Conv2D):
    return keras.ops.conv(x, kernel, strides=layer.strides, padding=layer.padding,
                          data_format="channels_last",
                          dilation_rate=layer.dilation_rate)
  return keras.ops.matmul(x, kernel)


def _pool_counts(layer, shape, dtype) -> tf.Tensor:
  """Inputs each pooling window averages over ((1, H', W', 1)): the window
  size, or fewer at the border with "same" padding (which TF excludes)."""
  ones = tf.ones([1, shape[1], shape[2], 1], dtype)
  window = tf.ones([*layer.pool_size, 1, 1], dtype)
  return tf.nn.conv2d(ones, window, strides=[1, *layer.strides, 1],
                      padding=layer.padding.upper())


def _shadow_layer(layer, x, shadow, dtype):
  """One layer that is neither weighted nor a tapped BN: (y, y')."""
  y = layer(x, training=False)
  if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout2D)):
    return y, shadow  # The identity in inference mode.
  if isinstance(layer, keras.layers.Flatten):
    return y, tf.reshape(shadow, tf.shape(y))
  if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
    # f'^2 = 1 or slope^2 (cap and threshold refused by `check_supported`).
    slope = float(layer.negative_slope)
    return y, shadow * tf.where(x > 0, tf.ones_like(shadow), slope ** 2)
  if isinstance(layer, keras.layers.Activation):
    return y, shadow * _squared_derivative(layer, layer.activation, x, dtype)
  if isinstance(layer, keras.layers.BatchNormalization):
    return y, shadow * _batch_norm_scale(layer, dtype)
  if isinstance(layer, keras.layers.MaxPooling2D):
    _, argmax = tf.nn.max_pool_with_argmax(
        tf.stop_gradient(x), ksize=[1, *layer.pool_size, 1],
        strides=[1, *layer.strides, 1], padding=layer.padding.upper(),
        include_batch_in_index=True)
    return y, tf.gather(tf.reshape(shadow, [-1]), argmax)
  if isinstance(layer, keras.layers.AveragePooling2D):
    # Coefficient 1/n per input of a window of n, squared: average / n.
    pooled = tf.nn.avg_pool2d(shadow, layer.pool_size, layer.strides,
                              layer.padding.upper())
    return y, pooled / _pool_counts(layer, x.shape, dtype)
  if isinstance(layer, keras.layers.GlobalAveragePooling2D):
    positions = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], dtype)
    return y, tf.reduce_mean(shadow, axis=[1, 2], keepdims=layer.keepdims) / positions
  if isinstance(layer, keras.layers.GlobalMaxPooling2D):
    flat_x = tf.reshape(x, [tf.shape(x)[0], -1, x.shape[-1]])
    flat_shadow = tf.reshape(shadow, tf.shape(flat_x))
    route = tf.one_hot(tf.argmax(flat_x, axis=1), tf.shape(flat_x)[1], axis=1,
                       dtype=dtype)
    return y, tf.reduce_sum(route * flat_shadow, axis=1, keepdims=layer.keepdims)
  raise _unsupported(layer, "no diagonal back-propagation rule")


def _batch_norm_scale(layer, dtype) -> tf.Tensor:
  """(d y / d x)^2 of an inference-mode BN, per channel."""
  inverse = 1.0 / (tf.cast(layer.moving_variance, dtype) + layer.epsilon)
  if layer.scale:
    return tf.square(tf.cast(layer.gamma, dtype)) * inverse
  return inverse


def weight_diag_backprop(chain: CNNChain, images,
                         unit_masks: Optional[Dict[int, tf.Tensor]] = None
                         ) -> Dict[int, tf.Tensor]:
  """Diagonal back-propagation Hessians, keyed like `kernel_hessian_diagonal`:
  each weighted layer's kernel shape, and (2, units) (gamma, beta) for each
  BN of `chain.bn_after`; batch sums, BN in inference mode."""
  check_supported(chain)
  dtype = diag_rules.shadow_dtype(chain.model)
  tapped_bns = set(chain.bn_after.values())
  eps = {i: tf.zeros(chain.group_tensor_shape(i), dtype)
         for i in sorted(set(chain.weighted) | tapped_bns)}
  masks_at = {}
  if unit_masks is not None:
    masks_at = {chain.mask_position[p]: m for p, m in unit_masks.items()}
  x, shadow = images, None
  # Only the dummy tensors are sources (see spaces/dag/diag_backprop.py).
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(list(eps.values()))
    for index, layer in enumerate(chain.layers):
      if index in masks_at:
        mask = masks_at[index]
        x = x * tf.cast(mask, x.dtype)
        if shadow is not None:
          shadow = shadow * tf.cast(mask, dtype)  # mask^2 = mask (0/1)
      if index > chain.final:
        break  # Only a trailing softmax follows the logits.
      if index in chain.weighted:
        kernel = tf.cast(layer.kernel, x.dtype)
        pre = _linear(layer, x, kernel)
        if layer.use_bias:
          pre = pre + tf.cast(layer.bias, pre.dtype)
        # H_W = sum x^2 (x) H_y, through the layer's own op on sg(x^2).
        new_shadow = _linear(layer, tf.square(tf.cast(tf.stop_gradient(x), dtype)),
                             eps[index])
        if shadow is not None:
          new_shadow += _linear(layer, shadow,
                                tf.square(tf.cast(layer.kernel, dtype)))
        shadow = new_shadow
        if index == chain.final and chain.strip_softmax:
          x = pre
        else:
          x = layer.activation(pre)
          shadow = shadow * _squared_derivative(layer, layer.activation, pre, dtype)
        continue
      if shadow is None:
        x = layer(x, training=False)
        continue
      if index in tapped_bns:
        normalised = (tf.cast(x, dtype) - tf.cast(layer.moving_mean, dtype)) * (
            tf.math.rsqrt(tf.cast(layer.moving_variance, dtype) + layer.epsilon))
        x = layer(x, training=False)
        shadow = (shadow * _batch_norm_scale(layer, dtype)
                  + eps[index][0] * tf.square(tf.stop_gradient(normalised))
                  + eps[index][1])
        continue
      x, shadow = _shadow_layer(layer, x, shadow, dtype)
    logits = tf.cast(x, dtype)
    curvature = tf.stop_gradient(
        diag_rules.cross_entropy_curvature(logits))
    target = tf.reduce_sum(curvature * shadow)
  grads = tape.gradient(target, list(eps.values()),
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return dict(zip(eps, grads))
