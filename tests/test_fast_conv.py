"""fast_conv.py and DilConv's folded 1x1: the same numbers as the plain
TensorFlow route (values and first and second derivatives), against
references that do not use the fast paths."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.nn import fast_conv
from conftest import ROOT


def _random(shape, seed):
  return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def _value_and_grads(fn, x, kernel):
  with tf.GradientTape() as tape:
    tape.watch([x, kernel])
    y = fn(x, kernel)
    loss = tf.reduce_sum(y * tf.cast(_random(y.shape, 7), y.dtype))
  return [y, *tape.gradient(loss, [x, kernel])]


# In a function, as the exact Hessian runs (eagerly, TensorFlow cannot
# differentiate Conv2DBackpropFilter: its gradient reads a missing attr).
@tf.function
def _second_derivative(fn, x, kernel):
  """d/dx of <dL/dx, x> + <dL/dkernel, kernel> for L = sum(fn(x, kernel)^2):
  it differentiates the backward pass (as the exact Hessian does)."""
  with tf.GradientTape() as outer:
    outer.watch(x)
    with tf.GradientTape() as inner:
      inner.watch([x, kernel])
      loss = tf.reduce_sum(tf.square(fn(x, kernel)))
    grad_x, grad_k = inner.gradient(loss, [x, kernel])
    pairing = tf.reduce_sum(grad_x * x) + tf.reduce_sum(grad_k * kernel)
  return outer.gradient(pairing, x)


@pytest.mark.parametrize("size,channels,k", ((8, 3, 5), (7, 4, 5), (6, 2, 7),
                                             (6, 3, 3)))
def test_depthwise_same_matches_the_native_kernel(size, channels, k):
  x = _random((3, size, size, channels), 0)
  kernel = _random((k, k, channels, 1), 1)
  ours = _value_and_grads(fast_conv.depthwise_same, x, kernel)
  plain = _value_and_grads(
      lambda a, w: tf.nn.depthwise_conv2d(a, w, [1, 1, 1, 1], "SAME"), x, kernel)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_depthwise_filter_gradient_against_numpy():
  # dK[i, j, c] = sum over n, h, w of xpad[n, h + i, w + j, c] dy[n, h, w, c].
  x = _random((2, 6, 5, 3), 2)
  dy = _random((2, 6, 5, 3), 3)
  xp = np.pad(x.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)))
  expected = np.zeros((5, 5, 3, 1), np.float32)
  for i in range(5):
    for j in range(5):
      expected[i, j, :, 0] = np.sum(xp[:, i:i + 6, j:j + 5] * dy.numpy(),
                                    axis=(0, 1, 2))
  got = fast_conv._depthwise_filter_gradient(x, dy, 5)  # pylint: disable=protected-access
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_depthwise_same_second_derivative():
  x = _random((2, 6, 6, 2), 4)
  kernel = _random((5, 5, 2, 1), 5)
  plain = _second_derivative(
      lambda a, w: tf.nn.depthwise_conv2d(a, w, [1, 1, 1, 1], "SAME"), x,
      kernel)
  np.testing.assert_allclose(
      _second_derivative(fast_conv.depthwise_same, x, kernel).numpy(),
      plain.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rate", (1, 2))
def test_same_conv_matches_explicit_padding(rate):
  x = _random((2, 9, 9, 3), 6)
  kernel = _random((5, 5, 3, 4), 7)
  pad = rate * 2
  # tf.nn.convolution runs a dilated VALID conv as SpaceToBatchND + an
  # undilated conv: a route independent of the native dilated kernel.
  reference = tf.nn.convolution(
      tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]), kernel,
      padding="VALID", dilations=rate)
  np.testing.assert_allclose(fast_conv.same_conv(x, kernel, rate).numpy(),
                             reference.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("batch", (1, 16))
def test_dil_conv_folded_and_unfolded_agree(stride, batch):
  """batch 16 folds the 1x1 into the kxk kernel (k^2 C < N H W), batch 1
  does not; both equal the op's Keras sublayers applied one by one."""
  c, size = 4, 8
  op = ops.DilConv(c, 5, stride)
  op.build((None, size, size, c))
  rng = np.random.default_rng(0)
  op.set_weights([rng.normal(size=w.shape).astype(np.float32)
                  for w in op.get_weights()])
  out = (size - 1) // stride + 1
  assert ops._fold_pointwise((batch, out, out, c), 5, c) == (batch == 16)  # pylint: disable=protected-access
  x = _random((batch, size, size, c), 8)

  def chain():
    y = op.conv(op.pad(op.relu(op.bn(x, training=False))))
    return op.pointwise(y[:, ::stride, ::stride, :])

  kernels = [op.conv.kernel, op.pointwise.kernel]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ours = op(x, training=False)
    reference = chain()
    weights = _random(ours.shape, 9)
    loss_ours = tf.reduce_sum(ours * weights)
    loss_reference = tf.reduce_sum(reference * weights)
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-4,
                             atol=1e-4)
  for a, b in zip(tape.gradient(loss_ours, [x, *kernels]),
                  tape.gradient(loss_reference, [x, *kernels])):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", (tf.float16, tf.bfloat16))
def test_same_conv_differentiates_in_half_precision(dtype):
  # Where the host's kernels refuse a dilation in a dtype (float16 on a
  # oneDNN CPU), the probe says so and the space-to-batch route is taken;
  # the function and its gradients then run and agree with float32.
  x = _random((2, 9, 9, 3), 10)
  kernel = _random((3, 3, 3, 4), 11)
  expected = _value_and_grads(lambda a, w: fast_conv.same_conv(a, w, 2), x,
                              kernel)
  got = _value_and_grads(lambda a, w: fast_conv.same_conv(a, w, 2),
                         tf.cast(x, dtype), tf.cast(kernel, dtype))
  for a, b in zip(got, expected):
    assert a.dtype == dtype
    np.testing.assert_allclose(tf.cast(a, tf.float32).numpy(), b.numpy(),
                               rtol=0.05, atol=0.1)


@pytest.mark.parametrize("shape", ((3, 5, 4, 6), (1, 1, 1, 2)))
def test_pointwise_matches_a_1x1_conv(shape):
  x = _random(shape, 12)
  kernel = _random((1, 1, shape[-1], 5), 13)
  ours = _value_and_grads(fast_conv.pointwise, x, kernel)
  plain = _value_and_grads(lambda a, w: tf.nn.conv2d(a, w, 1, "VALID"), x,
                           kernel)
  assert ours[0].shape == (*shape[:-1], 5)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_pointwise_keeps_an_unknown_batch_size():
  fn = tf.function(fast_conv.pointwise).get_concrete_function(
      tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec([1, 1, 3, 2]))
  assert fn.structured_outputs.shape.as_list() == [None, 4, 4, 2]


@pytest.mark.parametrize("size,k,rate", ((8, 5, 2), (5, 3, 2), (4, 3, 1), (3, 5, 2)))
def test_same_conv_on_small_maps_matches_padding_and_differentiates_twice(
    size, k, rate):
  # The window (rate (k - 1) + 1) spans the map: on a CPU the filter
  # gradient takes the shifted-matmul route.
  x = _random((3, size, size, 4), 14)
  kernel = _random((k, k, 4, 5), 15)
  pad = rate * (k // 2)

  def reference(a, w):
    return tf.nn.convolution(tf.pad(a, [[0, 0], [pad, pad], [pad, pad], [0, 0]]),
                             w, padding="VALID", dilations=rate)

  ours = _value_and_grads(lambda a, w: fast_conv.same_conv(a, w, rate), x,
                          kernel)
  for a, b in zip(ours, _value_and_grads(reference, x, kernel)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
  # The shifted-matmul filter gradient on its own, for any map size.
  dy = _random((3, size, size, 5), 16)
  with tf.GradientTape() as tape:
    tape.watch(kernel)
    pairing = tf.reduce_sum(reference(x, kernel) * dy)
  np.testing.assert_allclose(
      fast_conv._dilated_filter_gradient(x, dy, k, rate).numpy(),  # pylint: disable=protected-access
      tape.gradient(pairing, kernel).numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      _second_derivative(lambda a, w: fast_conv.same_conv(a, w, rate), x,
                         kernel).numpy(),
      _second_derivative(reference, x, kernel).numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape,stride", (((3, 8, 8, 4), 2), ((2, 9, 7, 5), 2),
                                          ((2, 32, 32, 4), 2), ((2, 10, 11, 3), 3)))
def test_strided_pointwise_matches_a_strided_1x1_conv(shape, stride):
  # Shapes where TensorFlow's own strided 1x1 conv runs (odd sizes keep
  # the last row and column): values, both gradients, second derivative.
  x = _random(shape, 17)
  kernel = _random((1, 1, shape[-1], 6), 18)
  ours = lambda a, w: fast_conv.strided_pointwise(a, w, stride)
  plain = lambda a, w: tf.nn.conv2d(a, w, stride, "VALID")
  mine, theirs = _value_and_grads(ours, x, kernel), _value_and_grads(plain, x, kernel)
  assert mine[0].shape == theirs[0].shape
  for a, b in zip(mine, theirs):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_second_derivative(ours, x, kernel).numpy(),
                             _second_derivative(plain, x, kernel).numpy(),
                             rtol=1e-4, atol=1e-4)


def _op_types(fn, shape, kernel_shape):
  graph = tf.function(fn).get_concrete_function(
      tf.TensorSpec(shape), tf.TensorSpec(kernel_shape)).graph
  return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("shape,conv", (((8, 56, 56, 4), False), ((2, 46, 46, 15), False),
                                        ((None, None, None, 8), False),
                                        ((8, 32, 32, 4), True), ((8, 56, 56, 16), True)))
def test_strided_conv1x1_avoids_the_conv_only_where_it_crashes(shape, conv):
  # Traced, not run: a Conv2D at the first shapes would take the test
  # process down with it (the child process below runs them).
  types = _op_types(lambda a, w: fast_conv.strided_conv1x1(a, w, 2), shape,
                    (1, 1, shape[-1], 4))
  assert ("Conv2D" in types) == conv, types
  assert ("MatMul" in types) == (not conv), types


def test_strided_1x1_layers_keep_their_variables_and_compute_the_conv():
  # The layers keep their Keras Conv2D sublayers (same variables, so
  # checkpoints and .keras files of earlier versions load: test_legacy_
  # fixtures.py) and compute what the plain strided conv computes.
  from bayesnas_tf.spaces.dag.channel_reduce import ChannelReduce
  from bayesnas_tf.spaces.tree.ops import TreeConv1x1
  x = _random((2, 9, 9, 4), 19)
  reduce_conv = ops.ReduceConv(4, name="r")
  y = reduce_conv(x, training=False)
  bn, conv = reduce_conv.chain
  assert fast_conv.is_strided_1x1(conv)
  assert [(v.path, tuple(v.shape)) for v in conv.variables] == [
      ("r/conv/kernel", (1, 1, 4, 4))]
  np.testing.assert_allclose(
      y.numpy(), tf.nn.conv2d(bn(x, training=False), conv.kernel, 2, "VALID").numpy(),
      rtol=1e-5, atol=1e-5)
  tree = TreeConv1x1(4, stride=2, name="t")
  y = tree(x, training=False)
  bn, relu, conv = tree.chain
  np.testing.assert_allclose(
      y.numpy(), tf.nn.conv2d(relu(bn(x, training=False)), conv.kernel, 2,
                              "VALID").numpy(), rtol=1e-5, atol=1e-5)
  pre = ChannelReduce(8, "factorized", name="pre")
  y = pre(x, training=False)
  assert sorted((v.path, tuple(v.shape)) for v in pre.trainable_variables) == [
      ("pre/bn/beta", (4,)), ("pre/bn/gamma", (4,)), ("pre/conv/kernel", (1, 1, 4, 8)),
      ("pre/size_reduct1/kernel", (1, 1, 4, 2)), ("pre/size_reduct2/kernel", (1, 1, 4, 2))]
  shifted = tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
  plain = tf.concat([tf.nn.conv2d(x, pre.reduce_convs[0].kernel, 2, "VALID"),
                     tf.nn.conv2d(shifted, pre.reduce_convs[1].kernel, 2, "VALID")], -1)
  np.testing.assert_allclose(
      y.numpy(), tf.nn.conv2d(pre.relu(pre.bn(plain, training=False)),
                              pre.conv.kernel, 1, "VALID").numpy(),
      rtol=1e-5, atol=1e-5)


# Run in a child process: before the strided 1x1 convs took the slice +
# matmul route, each of these gradients killed the process (SIGSEGV or
# SIGABRT in oneDNN's Conv2DBackpropFilter, exit 139 / 134) on this
# build of TensorFlow; `tf.nn.conv2d(x, w, 2, "VALID")` with a 1x1 kernel on
# (8, 56, 56, C), C = 4, 8, 12, still does.
_FORMERLY_CRASHING = """
import numpy as np, tensorflow as tf
from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.channel_reduce import ChannelReduce
from bayesnas_tf.spaces.tree.ops import TreeConv1x1
layers = [(ops.ReduceConv(4, name="r"), 4), (ops.ReduceConv(8, name="r8"), 8),
          (ChannelReduce(8, "conv", name="c"), 12),
          (ChannelReduce(8, "factorized", name="f"), 8),
          (TreeConv1x1(4, stride=2, name="t"), 4)]
for layer, channels in layers:
  x = tf.random.normal((8, 56, 56, channels))
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(layer(x, training=True) ** 2)
  grads = tape.gradient(loss, [x] + layer.trainable_variables)
  assert all(np.isfinite(g.numpy()).all() for g in grads)
  print(layer.name, "ok")
"""


def test_formerly_crashing_strided_1x1_gradients_run_in_a_child_process():
  result = subprocess.run([sys.executable, "-c", _FORMERLY_CRASHING], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["r", "ok", "r8", "ok", "c", "ok", "f", "ok",
                                   "t", "ok"]
