"""The squared-coefficient rules of the diagonal Hessian back-propagation.

Becker-LeCun's recursion (ALGORITHM.md 3.4.2) propagates the diagonal of the
loss Hessian through a linear map y = A x as H_x = (A o A)^T H_y, which is
the vector-Jacobian product of the same map with squared coefficients. A
"shadow" activation x' runs next to the real one x through each layer's
squared twin (`(layer, x, x') -> (y, y')`, a shadow of None standing for
x' = 0):

* conv, depthwise conv and dense layers with W^2 (the bias drops out),
* inference BN with (gamma / sqrt(var + eps))^2,
* a k x k average pool with 1/k^4 per window, a global average pool with
  1/(HW)^2,
* zero padding as it is, a max pool with the routing of the real input's
  argmax, a ReLU with the real pre-activation's mask.

These rules cover plain Keras layers and our `BatchNorm`; the gate walk of
a supernet (spaces/dag/diag_backprop.py) adds its composite layers and
gates on top, and the weight walk of --mode=compress
(compress/weight_diag_backprop.py) reads `shadow_dtype` and
`cross_entropy_curvature` from here.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from bayesnas_tf.nn import fast_conv
from bayesnas_tf.nn.batch_norm import BatchNorm

Pair = Tuple[tf.Tensor, Optional[tf.Tensor]]


def shadow_dtype(layer) -> tf.DType:
  """Curvature arithmetic runs in float32 (float64 for float64 models), also
  under mixed precision."""
  return tf.float64 if layer.compute_dtype == "float64" else tf.float32


def real(x, dtype) -> tf.Tensor:
  return tf.cast(tf.stop_gradient(x), dtype)


def squared(variable, dtype) -> tf.Tensor:
  return tf.square(tf.cast(tf.convert_to_tensor(variable), dtype))


def add(a: Optional[tf.Tensor], b: Optional[tf.Tensor]) -> Optional[tf.Tensor]:
  if a is None:
    return b
  return a if b is None else a + b


def check(condition: bool, layer, what: str) -> None:
  if not condition:
    raise ValueError(
        f"diag_backprop has no shadow rule for {type(layer).__name__} "
        f"{layer.name!r} with {what}.")


def check_linear_activation(layer) -> None:
  check(getattr(layer.activation, "__name__", "") == "linear", layer,
        "a nonlinear activation (only ReLU layers and linear maps are "
        "supported: f'' = 0 keeps the D term of ALGORITHM.md 3.4.2 at 0)")


# --- leaf layers: (layer, x, x') -> (y, y') -----------------------------------
def _batch_norm(layer: BatchNorm, x, shadow, dtype) -> Pair:
  y = layer(x, training=False)
  if shadow is None:
    return y, None
  # Inference BN is x -> x * gamma / sqrt(var + eps) + beta, per channel.
  scale = squared(layer.gamma, dtype) / (
      tf.cast(tf.convert_to_tensor(layer.moving_variance), dtype) + layer.epsilon)
  return y, shadow * scale


def _relu(layer: keras.layers.ReLU, x, shadow, dtype) -> Pair:
  check(layer.max_value is None and not layer.negative_slope
        and not layer.threshold, layer, "a cap, slope or threshold")
  y = layer(x)
  if shadow is None:
    return y, None
  # f'(a)^2 = 1[a > 0] per example (the mask of TF's ReluGrad).
  return y, shadow * tf.cast(x > 0, dtype)


def _zero_pad(layer: keras.layers.ZeroPadding2D, x, shadow, dtype) -> Pair:
  del dtype
  check(layer.data_format == "channels_last", layer, "channels_first data")
  y = layer(x)
  if shadow is None:
    return y, None
  (top, bottom), (left, right) = layer.padding
  return y, tf.pad(shadow, [[0, 0], [top, bottom], [left, right], [0, 0]])


def _conv(layer: keras.layers.Conv2D, x, shadow, dtype) -> Pair:
  check(layer.padding == "valid" and layer.groups == 1
        and layer.data_format == "channels_last", layer,
        "padding other than 'valid', groups or channels_first data")
  check_linear_activation(layer)
  y = (fast_conv.strided_conv1x1(x, layer.kernel, layer.strides[0])
       if fast_conv.is_strided_1x1(layer) else layer(x))
  if shadow is None:
    return y, None
  # The bias is an offset: it has no second derivative and drops out.
  if fast_conv.is_strided_1x1(layer):
    # As SequenceOp computes it: oneDNN's strided 1x1 filter gradient
    # crashes on narrow inputs (fast_conv.strided_conv1x1).
    return y, fast_conv.strided_conv1x1(shadow, squared(layer.kernel, dtype),
                                          layer.strides[0])
  return y, tf.nn.convolution(
      shadow, squared(layer.kernel, dtype), strides=layer.strides,
      padding="VALID", dilations=layer.dilation_rate)


def _depthwise_conv(layer: keras.layers.DepthwiseConv2D, x, shadow,
                    dtype) -> Pair:
  check(layer.padding == "valid" and layer.data_format == "channels_last",
        layer, "padding other than 'valid' or channels_first data")
  check_linear_activation(layer)
  y = layer(x)
  if shadow is None:
    return y, None
  return y, tf.nn.depthwise_conv2d(
      shadow, squared(layer.kernel, dtype),
      strides=[1, *layer.strides, 1], padding="VALID",
      dilations=layer.dilation_rate)


def _max_pool(layer: keras.layers.MaxPooling2D, x, shadow, dtype) -> Pair:
  del dtype
  check(layer.padding == "valid" and layer.data_format == "channels_last",
        layer, "padding other than 'valid' or channels_first data")
  y = layer(x)
  if shadow is None:
    return y, None
  # Each output copies its window's argmax at the real input: the same 0/1
  # routing as the pool's gradient (3.4.4 quirk 4, fixed: indices and the
  # shadow live on the same padded map).
  _, argmax = tf.nn.max_pool_with_argmax(
      tf.stop_gradient(x), ksize=[1, *layer.pool_size, 1],
      strides=[1, *layer.strides, 1], padding="VALID",
      include_batch_in_index=True)
  return y, tf.gather(tf.reshape(shadow, [-1]), argmax)


def _avg_pool(layer: keras.layers.AveragePooling2D, x, shadow, dtype) -> Pair:
  check(layer.padding == "valid" and layer.data_format == "channels_last",
        layer, "padding other than 'valid' or channels_first data")
  y = layer(x)
  if shadow is None:
    return y, None
  # Coefficient 1/k per input, squared: average / k (1/81 per 3x3 window;
  # the official code used 1/9, 3.4.4 quirk 5).
  window = float(layer.pool_size[0] * layer.pool_size[1])
  pooled = tf.nn.avg_pool2d(shadow, layer.pool_size, layer.strides, "VALID")
  return y, pooled / tf.cast(window, dtype)


def _global_avg_pool(layer: keras.layers.GlobalAveragePooling2D, x, shadow,
                     dtype) -> Pair:
  check(layer.data_format == "channels_last", layer, "channels_first data")
  y = layer(x)
  if shadow is None:
    return y, None
  # Coefficient 1/(HW), squared (the official head used 0.5, quirk 5).
  positions = tf.cast(tf.shape(shadow)[1] * tf.shape(shadow)[2], dtype)
  return y, tf.reduce_mean(shadow, axis=[1, 2],
                           keepdims=layer.keepdims) / positions


def _dense(layer: keras.layers.Dense, x, shadow, dtype) -> Pair:
  check_linear_activation(layer)
  y = layer(x)
  if shadow is None:
    return y, None
  return y, tf.tensordot(shadow, squared(layer.kernel, dtype),
                         [[shadow.shape.rank - 1], [0]])


Rule = Callable[..., Pair]

# The rules of plain layers, most specific class first (a Keras subclass
# would match its base otherwise); `apply_rule` picks the first that fits.
KERAS_RULES: Tuple[Tuple[type, Rule], ...] = (
    (BatchNorm, _batch_norm),
    (keras.layers.ReLU, _relu),
    (keras.layers.ZeroPadding2D, _zero_pad),
    (keras.layers.DepthwiseConv2D, _depthwise_conv),
    (keras.layers.Conv2D, _conv),
    (keras.layers.MaxPooling2D, _max_pool),
    (keras.layers.AveragePooling2D, _avg_pool),
    (keras.layers.GlobalAveragePooling2D, _global_avg_pool),
    (keras.layers.Dense, _dense),
)


def apply_rule(rules: Sequence[Tuple[type, Rule]], layer, x, shadow,
               dtype) -> Pair:
  """(y, y') of `layer` by the first of `rules` whose class it is."""
  for cls, rule in rules:
    if isinstance(layer, cls):
      return rule(layer, x, shadow, dtype)
  raise ValueError(f"diag_backprop has no shadow rule for layer "
                   f"{layer.name!r} of type {type(layer).__name__}.")


def cross_entropy_curvature(logits: tf.Tensor) -> tf.Tensor:
  """diag of the softmax CE Hessian in the logits, p (1 - p) (invariant 11)."""
  probs = tf.nn.softmax(logits)
  return probs * (1.0 - probs)
