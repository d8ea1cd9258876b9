"""The supernet's convolutions computed the same way, faster on this host.

Profiling the paper supernet's search step (bench/profile_step.py) and
timing each kernel at the supernet's shapes (batch 18: 32x32x36, 16x16x72,
8x8x144; forward + backward, one thread) showed four places where
TensorFlow's default route runs the same arithmetic slower than it can:

* dilated "SAME" convs: `tf.nn.convolution` with a dilation rate wraps the
  conv in SpaceToBatchND / BatchToSpaceND. cuDNN and oneDNN (TensorFlow's
  default CPU kernels on x86) take the rate themselves, and there the plain
  dilated Conv2D is 10-30% faster (`same_conv`).
* on a CPU, the filter gradient of a dilated conv whose window spans the
  map (a dil5 op's 9x9 window on the last cells' 8x8 maps): oneDNN's takes
  1.3x (8x8x144) to 3x (smaller channel counts) the time of k^2 matmuls of
  shifted inputs (`_dilated_filter_gradient`), each over only the positions
  where its tap meets the map (a dil5 op at 8x8x144, forward + backward on
  a faster AMD EPYC: oneDNN 16.6 ms, padded taps 10.1 ms, in-map taps 7.4).
* on a CPU, the filter gradient of a 5x5 (or larger) depthwise conv
  (DepthwiseConv2dNativeBackpropFilter): 3-5x the time of the forward conv.
  `depthwise_same` computes it as one depthwise conv instead, about 1.9x
  faster; for 3x3 kernels the native kernel is faster and is kept.
* 1x1 stride-1 convs: oneDNN's GEMM runs them as a matmul over the
  flattened positions 20-45% faster than its 1x1 Conv2D (`pointwise`).
* not faster but safe: oneDNN's filter gradient of a strided 1x1 conv
  crashes the process for narrow inputs on larger maps; `strided_conv1x1`
  takes a strided slice and the matmul there (`strided_pointwise`).

All give the same numbers up to float rounding, first and second
derivatives included (tests/test_fast_conv.py).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from bayesnas_tf.nn import devices

# Smallest depthwise kernel whose filter gradient takes the depthwise-conv
# route on a CPU (measured: 5x5 1.9x faster, 3x3 1.6x slower).
_MIN_DEPTHWISE_KERNEL = 5


@functools.lru_cache(maxsize=None)
def native_dilated_conv(dtype: tf.DType = tf.float32) -> bool:
  """Whether this host's Conv2D kernels, forward and backward, take a
  dilation rate themselves for `dtype`.

  True with cuDNN and with oneDNN CPU builds (float32, bfloat16); TensorFlow's
  Eigen CPU kernels (and so float16 on a CPU) refuse rates above 1. Probed
  once per dtype, eagerly, with a tiny conv and its gradients.
  """
  # The three kernels are called directly: `tf.init_scope` (needed when the
  # first call comes while a function is traced) pauses gradient tapes.
  strides, dilations = [1, 1, 1, 1], [1, 2, 2, 1]
  with tf.init_scope():
    images = tf.ones([2, 6, 6, 2], dtype)
    kernel = tf.ones([3, 3, 2, 2], dtype)
    try:
      output = tf.raw_ops.Conv2D(input=images, filter=kernel, strides=strides,
                                 padding="SAME", dilations=dilations)
      tf.raw_ops.Conv2DBackpropInput(
          input_sizes=tf.shape(images), filter=kernel, out_backprop=output,
          strides=strides, padding="SAME", dilations=dilations)
      tf.raw_ops.Conv2DBackpropFilter(
          input=images, filter_sizes=tf.shape(kernel), out_backprop=output,
          strides=strides, padding="SAME", dilations=dilations)
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError,
            tf.errors.NotFoundError):
      return False
  return True


def pointwise(x, kernel):
  """A 1x1 stride-1 conv of an NHWC `x` with a (1, 1, C_in, C_out) kernel,
  as one (N H W, C_in) x (C_in, C_out) matmul."""
  with tf.name_scope("pointwise"):
    channels = kernel.shape[-1]
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel[0, 0])
    shape = [d if d is not None else tf.shape(x)[i]
             for i, d in enumerate(x.shape[:-1])]
    return tf.reshape(y, [*shape, channels])


# Where oneDNN's Conv2DBackpropFilter of a strided 1x1 conv crashes the
# process (TensorFlow 2.21, x86 CPU; SIGSEGV or SIGABRT, no Python error).
# Probed one process per shape over batch 2-32, maps 7-448, 2-48 input
# channels, strides 2-4, float32 and bfloat16: it crashed with 2-15 input
# channels on maps from 46x46 up (not on every size: 46, 48, 52, 56, 64,
# 112, 224, ...), at strides 2 and 4, never with 16 or more channels, on
# maps up to 32x32 or at stride 3; the forward conv and
# Conv2DBackpropInput never crashed. TF_ENABLE_ONEDNN_OPTS=0 avoids it.
_SAFE_CHANNELS = 16
_SAFE_MAP_SIZE = 32


def strided_conv1x1(x, kernel, stride: int):
  """`tf.nn.conv2d(x, kernel, stride, "VALID")` for a (1, 1, C_in, C_out)
  kernel, routed around oneDNN's crashing filter gradient.

  Where that gradient crashes (fewer than 16 input channels on maps larger
  than 32x32, or sizes not known when traced) it is `strided_pointwise`;
  elsewhere the conv itself, 2-5x faster than the slice and matmul there
  (measured, forward + backward, one thread: (18, 32, 32, 36) 1.4 against
  7.1 ms; (32, 56, 56, 16) 2.5 against 11.6 ms), so the CIFAR networks,
  whose maps are at most 32x32, compute exactly what they computed before.
  """
  height, width, channels = x.shape[1], x.shape[2], x.shape[3]
  small_map = (height is not None and width is not None
               and max(height, width) <= _SAFE_MAP_SIZE)
  if stride == 1 or small_map or (channels is not None
                                  and channels >= _SAFE_CHANNELS):
    return tf.nn.conv2d(x, kernel, stride, "VALID")
  return strided_pointwise(x, kernel, stride)


def strided_pointwise(x, kernel, stride: int):
  """A 1x1 "VALID" conv with `stride` of an NHWC `x`: output (i, j) reads
  exactly input (stride i, stride j), so it is the 1x1 matmul (`pointwise`)
  of every stride-th row and column. No conv kernel runs, forward or
  backward: the slice's gradient is a scatter into zeros, the matmul's are
  matmuls.
  """
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  return pointwise(x, kernel)


def is_strided_1x1(layer) -> bool:
  """Whether `layer` is a bias-free, linear, "VALID" Keras Conv2D with a 1x1
  kernel and a stride above 1: what `strided_conv1x1` computes."""
  # Exactly Conv2D: a subclass may compute something else in its call.
  return (type(layer) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
          and tuple(layer.kernel_size) == (1, 1) and layer.strides[0] > 1
          and layer.strides[0] == layer.strides[1] and layer.padding == "valid"
          and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
          and not layer.use_bias and layer.data_format == "channels_last"
          and getattr(layer.activation, "__name__", "") == "linear")


def same_conv(x, kernel, rate: int = 1):
  """A stride-1 "SAME" conv with dilation `rate` (for odd kernels this is
  the official code's symmetric zero pad of rate (k - 1) / 2 + VALID conv)."""
  if rate > 1 and not native_dilated_conv(x.dtype):
    return tf.nn.convolution(x, kernel, padding="SAME", dilations=rate)
  size = kernel.shape[0]
  reach = rate * (size - 1) + 1
  if (rate == 1 or not _cpu_only() or None in x.shape[1:3]
      or reach < min(x.shape[1], x.shape[2])):
    return tf.nn.conv2d(x, kernel, 1, "SAME", dilations=rate)

  # The kernel reaches across the whole image (the 9x9 window of a dil5 op
  # on the 8x8 maps of the last cells): oneDNN's filter gradient is then
  # slower than k^2 matmuls of shifted inputs. (A variable is read
  # first: the gradient then flows to it through the read.)
  kernel = tf.convert_to_tensor(kernel)

  @tf.custom_gradient
  def conv(images, filters):
    def grad(dy):
      # Named so that profiles (bench/profile_step.py) can tell these
      # kernels apart: a custom gradient's ops carry no layer scope.
      with tf.name_scope("dilated_conv_gradient"):
        dx = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(images), filter=filters, out_backprop=dy,
            strides=[1, 1, 1, 1], padding="SAME", dilations=[1, rate, rate, 1])
        return dx, _dilated_filter_gradient(images, dy, size, rate)
    return tf.nn.conv2d(images, filters, 1, "SAME", dilations=rate), grad

  return conv(x, kernel)


def _dilated_filter_gradient(x, dy, kernel_size: int, rate: int):
  """d loss / d kernel of a stride-1 "SAME" conv with an odd k x k kernel:
  dK[i, j] = sum over positions of x[p + o_ij]^T dy[p], one (C_in, P) x
  (P, C_out) matmul per tap, over only the positions p whose shifted input
  p + o_ij lies inside the map. The zero padding adds nothing, and on maps
  the window spans it is up to half of each tap (a dil5 op on an 8x8 map:
  49%); a tap that never meets the map gets a zero gradient."""
  with tf.name_scope("dilated_filter_gradient"):
    height, width = x.shape[1], x.shape[2]
    channels, outputs = x.shape[3], dy.shape[-1]
    zero = tf.zeros([channels, outputs], x.dtype)
    taps = []
    for row_offset, rows in _tap_ranges(kernel_size, rate, height):
      for col_offset, cols in _tap_ranges(kernel_size, rate, width):
        if rows is None or cols is None:
          taps.append(zero)
          continue
        shifted = x[:, rows[0] + row_offset:rows[1] + row_offset,
                    cols[0] + col_offset:cols[1] + col_offset, :]
        taps.append(tf.matmul(
            tf.reshape(shifted, [-1, channels]),
            tf.reshape(dy[:, rows[0]:rows[1], cols[0]:cols[1], :],
                       [-1, outputs]),
            transpose_a=True))
    return tf.reshape(tf.stack(taps), [kernel_size, kernel_size, channels,
                                       outputs])


def _tap_ranges(kernel_size: int, rate: int, length: int):
  """For each tap of a "SAME" dilated window along one axis: its offset o
  and the output range [lo, hi) whose input lo + o .. hi - 1 + o is inside
  [0, length), or None where there is no such output."""
  half = kernel_size // 2
  for tap in range(kernel_size):
    offset = rate * (tap - half)
    lo, hi = max(0, -offset), min(length, length - offset)
    yield offset, ((lo, hi) if lo < hi else None)


@functools.lru_cache(maxsize=None)
def _cpu_only() -> bool:
  return not devices.has_accelerator()


def _depthwise_filter_gradient(x, dy, kernel_size: int):
  """d loss / d kernel of a stride-1 "SAME" depthwise conv, (k, k, C, 1).

  dK[i, j, c] = sum_{n, h, w} xpad[n, h + i, w + j, c] dy[n, h, w, c]: a
  VALID depthwise conv of the padded input, with batch and channel folded
  into N*C channels, by dy as an H x W kernel; the (k, k) output is then
  summed over the batch.
  """
  pad = kernel_size // 2
  height, width, channels = x.shape[1], x.shape[2], x.shape[3]
  padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  images = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]),
                      [1, height + 2 * pad, width + 2 * pad, -1])
  filters = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [height, width, -1, 1])
  products = tf.nn.depthwise_conv2d(images, filters, [1, 1, 1, 1], "VALID")
  per_example = tf.reshape(products, [kernel_size, kernel_size, -1, channels])
  return tf.reduce_sum(per_example, axis=2)[..., tf.newaxis]


def depthwise_same(x, kernel, rate: int = 1):
  """`tf.nn.depthwise_conv2d(x, kernel, stride 1, "SAME", dilation rate)`
  for an odd k x k kernel of multiplier 1; on a CPU, undilated, k >= 5 and
  known spatial sizes, its filter gradient is `_depthwise_filter_gradient`."""
  kernel = tf.convert_to_tensor(kernel)  # a variable is read outside the
  size = kernel.shape[0]                # custom gradient (see same_conv)
  if (rate > 1 or size < _MIN_DEPTHWISE_KERNEL or kernel.shape[-1] != 1
      or None in x.shape[1:] or not _cpu_only()):
    return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME",
                                  dilations=[rate, rate])

  @tf.custom_gradient
  def conv(images, filters):
    def grad(dy):
      dx = tf.nn.depthwise_conv2d_backprop_input(
          tf.shape(images), filters, dy, [1, 1, 1, 1], "SAME")
      return dx, _depthwise_filter_gradient(images, dy, size)
    return tf.nn.depthwise_conv2d(images, filters, [1, 1, 1, 1], "SAME"), grad

  return conv(x, kernel)
