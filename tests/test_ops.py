"""Tests of the candidate operations (ALGORITHM.md 1.1, 9.1).

Every primitive of `ops.OPS` at stride 1 and 2 goes through `run_layer_test`
with the exact parameter counts of ALGORITHM.md 1.1. The numerics are checked
against an independent NumPy reference written here (explicit symmetric zero
padding, then a VALID window), never against the layer itself.
"""

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag import ops
from bayesnas_tf import testing
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.nn import batch_norm

BN_EPS = 1e-5


# --- the parameter-count formulas of ALGORITHM.md 1.1 -------------------------
def expected_params(name: str, c: int, stride: int) -> int:
  if name == "sep3":
    return 2 * c * c + 22 * c  # 2C^2 + (4 + 2*3^2)C
  if name == "sep5":
    return 2 * c * c + 54 * c  # 2C^2 + (4 + 2*5^2)C
  if name == "dil3":
    return 10 * c * c + 2 * c  # (3^2 + 1)C^2 + 2C
  if name == "dil5":
    return 26 * c * c + 2 * c  # (5^2 + 1)C^2 + 2C
  if name in ("max", "avg"):
    return 0
  if name == "id":
    return 0 if stride == 1 else c * c + 2 * c  # ReduceConv: BN + 1x1
  raise AssertionError(f"no formula for {name}")


EXPECTED_WEIGHTS = {"sep3": 8, "sep5": 8, "dil3": 4, "dil5": 4, "max": 0,
                    "avg": 0}


def expected_num_weights(name: str, stride: int) -> int:
  if name == "id":
    return 0 if stride == 1 else 3  # BN gamma, beta; 1x1 kernel
  return EXPECTED_WEIGHTS[name]


def expected_class(name: str, stride: int):
  return {"sep3": ops.SepConv, "sep5": ops.SepConv, "dil3": ops.DilConv,
          "dil5": ops.DilConv, "max": ops.Pool3x3, "avg": ops.Pool3x3,
          "id": ops.Identity if stride == 1 else ops.ReduceConv}[name]


def test_formulas_match_algorithm_md():
  # The closed forms quoted in ALGORITHM.md 1.1, at C = 36.
  c = 36
  assert expected_params("sep3", c, 1) == 2 * c**2 + 22 * c == 3384
  assert expected_params("sep5", c, 1) == 2 * c**2 + 54 * c == 4536
  assert expected_params("dil3", c, 1) == 10 * c**2 + 2 * c == 13032
  assert expected_params("dil5", c, 1) == 26 * c**2 + 2 * c == 33768
  assert expected_params("id", c, 2) == c**2 + 2 * c == 1368


def test_primitives_derived_from_registry():
  assert ops.PRIMITIVES == tuple(ops.OPS)
  assert ops.PRIMITIVES == ("sep3", "sep5", "dil3", "dil5", "max", "avg", "id")


# --- every primitive through run_layer_test -----------------------------------
# (channels, spatial): an even 8x8 input at C=4 and an odd 7x7 one at C=8.
SIZES = ((4, 8), (8, 7))


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("name", ops.PRIMITIVES)
@pytest.mark.parametrize("channels,size", SIZES)
def test_primitive_layer(name, stride, channels, size):
  op = ops.make_op(name, channels, stride)
  assert isinstance(op, expected_class(name, stride))
  assert op.name == name
  out = (size - 1) // stride + 1  # PyTorch: floor((H + 2p - k) / s) + 1
  testing.run_layer_test(
      type(op), op.get_config(),
      input_shape=(2, size, size, channels),
      expected_output_shape=(2, out, out, channels),
      expected_num_trainable_weights=expected_num_weights(name, stride),
      expected_num_trainable_params=expected_params(name, channels, stride))


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("name", ops.PRIMITIVES)
def test_primitive_param_count_at_paper_width(name, stride):
  c = 36
  op = ops.make_op(name, c, stride)
  op.build((None, 16, 16, c))
  assert testing.num_params(op.trainable_weights) == expected_params(
      name, c, stride)
  assert not op.trainable_weights or all(
      "moving" not in v.path for v in op.trainable_weights)


def test_id_op_is_identity_at_stride_1():
  op = ops.make_op("id", 4, 1)
  x = tf.random.normal((2, 5, 5, 4))
  np.testing.assert_array_equal(op(x).numpy(), x.numpy())


# --- NumPy reference ----------------------------------------------------------
def np_pad(x, pad):
  """Symmetric zero padding of H and W, like PyTorch's F.pad / padding=p."""
  return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _windows(xp, k, stride, dilation):
  """Yields (i, j, patch), patch[b, y, x] = xp[b, y*s + i*d, x*s + j*d]."""
  span = dilation * (k - 1) + 1
  out_h = (xp.shape[1] - span) // stride + 1
  out_w = (xp.shape[2] - span) // stride + 1
  for i in range(k):
    for j in range(k):
      r, c = i * dilation, j * dilation
      yield i, j, xp[:, r:r + (out_h - 1) * stride + 1:stride,
                     c:c + (out_w - 1) * stride + 1:stride, :]


def np_conv(x, kernel, stride=1, dilation=1, pad=0):
  """Dense conv; kernel (k, k, Cin, Cout), no bias."""
  out = 0.0
  for i, j, patch in _windows(np_pad(x, pad), kernel.shape[0], stride,
                              dilation):
    out = out + patch @ kernel[i, j]
  return out


def np_depthwise(x, kernel, stride=1, pad=0):
  """Depthwise conv; kernel (k, k, C, 1), no bias."""
  out = 0.0
  for i, j, patch in _windows(np_pad(x, pad), kernel.shape[0], stride, 1):
    out = out + patch * kernel[i, j, :, 0]
  return out


def np_pool(x, pool_type, stride):
  """3x3 pool after a zero pad of 1 (max over zeros too; avg always / 9)."""
  patches = [p for _, _, p in _windows(np_pad(x, 1), 3, stride, 1)]
  if pool_type == "max":
    return np.max(np.stack(patches), axis=0)
  return np.sum(np.stack(patches), axis=0) / 9.0


def np_bn(x, w, prefix):
  """Inference-mode BatchNorm with the layer's moving statistics."""
  return ((x - w[prefix + "moving_mean"])
          / np.sqrt(w[prefix + "moving_variance"] + BN_EPS)
          * w[prefix + "gamma"] + w[prefix + "beta"])


def relu(x):
  return np.maximum(x, 0.0)


def randomize_weights(layer, seed=0):
  """Random values for every variable (BN stats included); returns them by name.

  Names are the variable paths without the layer's own name, e.g.
  "bn1/gamma" or "depthwise1/kernel".
  """
  rng = np.random.RandomState(seed)
  values = {}
  for v in layer.weights:
    if v.path.endswith("moving_variance") or v.path.endswith("gamma"):
      value = rng.uniform(0.5, 1.5, v.shape)
    else:
      value = rng.normal(0.0, 0.5, v.shape)
    v.assign(value.astype("float32"))
    values[v.path[len(layer.name) + 1:]] = value.astype("float64")
  return values


def np_sep_block(x, w, block, k, stride):
  y = relu(np_bn(x, w, f"bn{block}/"))
  y = np_depthwise(y, w[f"depthwise{block}/kernel"], stride, pad=k // 2)
  return np_conv(y, w[f"pointwise{block}/kernel"])


def np_sep_conv(x, w, k, stride):
  return np_sep_block(np_sep_block(x, w, 1, k, stride), w, 2, k, 1)


def np_dil_conv(x, w, k, stride):
  y = relu(np_bn(x, w, "bn/"))
  y = np_conv(y, w["dilated/kernel"], stride, dilation=2, pad=k - 1)
  return np_conv(y, w["pointwise/kernel"])


def random_input(shape, seed=1):
  return np.random.RandomState(seed).standard_normal(shape)


def run(layer, x, training=False):
  return layer(tf.constant(x, tf.float32), training=training).numpy()


# (a) max pool pads with zeros, not -inf.
@pytest.mark.parametrize("size", (8, 7))
@pytest.mark.parametrize("stride", (1, 2))
def test_max_pool_pads_with_zeros(stride, size):
  op = ops.Pool3x3(3, "max", stride)
  x = -1.0 - np.abs(random_input((2, size, size, 3)))  # all negative
  y = run(op, x)
  np.testing.assert_allclose(y, np_pool(x, "max", stride), atol=1e-6)
  # Every window on the border sees a zero of the padding.
  np.testing.assert_array_equal(y[:, 0], 0.0)
  np.testing.assert_array_equal(y[:, :, 0], 0.0)
  if stride == 1 or size % 2 == 1:  # the last output row touches the pad
    np.testing.assert_array_equal(y[:, -1], 0.0)
    np.testing.assert_array_equal(y[:, :, -1], 0.0)
  # Interior windows stay negative (no zero leaks in).
  assert np.all(y[:, 1:-1, 1:-1] < 0)
  # A random (mixed-sign) input matches too.
  x = random_input((2, size, size, 3), seed=2)
  np.testing.assert_allclose(run(op, x), np_pool(x, "max", stride), atol=1e-6)


# (b) avg pool counts the padding: every window divides by 9.
@pytest.mark.parametrize("size", (8, 7))
@pytest.mark.parametrize("stride", (1, 2))
def test_avg_pool_divides_by_nine(stride, size):
  op = ops.Pool3x3(3, "avg", stride)
  y = run(op, np.ones((1, size, size, 3)))
  assert y[0, 0, 0, 0] == pytest.approx(4.0 / 9.0, abs=1e-6)  # corner
  assert y[0, 0, 1, 0] == pytest.approx(6.0 / 9.0, abs=1e-6)  # top edge
  assert y[0, 1, 1, 0] == pytest.approx(1.0, abs=1e-6)  # interior
  np.testing.assert_allclose(y, np_pool(np.ones((1, size, size, 3)), "avg",
                                        stride), atol=1e-6)
  x = random_input((2, size, size, 3))
  np.testing.assert_allclose(run(op, x), np_pool(x, "avg", stride), atol=1e-5)


# (c) stride-2 dilated conv = stride-1 output subsampled = PyTorch's conv.
@pytest.mark.parametrize("size", (8, 7))
@pytest.mark.parametrize("name,k", (("dil3", 3), ("dil5", 5)))
def test_dil_conv_stride_2(name, k, size):
  c = 4
  op1 = ops.make_op(name, c, 1)
  op2 = ops.make_op(name, c, 2)
  op1.build((None, size, size, c))
  op2.build((None, size, size, c))
  w = randomize_weights(op1)
  op2.set_weights(op1.get_weights())
  x = random_input((2, size, size, c))
  y1, y2 = run(op1, x), run(op2, x)
  out = (size - 1) // 2 + 1
  assert y2.shape == (2, out, out, c)
  np.testing.assert_allclose(y2, y1[:, ::2, ::2, :], atol=1e-5)
  # Direct dilated conv: pad 2 (dil3) / 4 (dil5), stride 2, dilation 2.
  np.testing.assert_allclose(y2, np_dil_conv(x, w, k, 2), atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(y1, np_dil_conv(x, w, k, 1), atol=1e-4,
                             rtol=1e-4)


# (d) stride-2 padding is symmetric (1, 1), as in PyTorch, not TF's (0, 1).
@pytest.mark.parametrize("size", (8, 7))
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("k", (3, 5))
def test_sep_conv_matches_reference(k, stride, size):
  c = 4
  op = ops.SepConv(c, k, stride, name="sep")
  op.build((None, size, size, c))
  w = randomize_weights(op)
  x = random_input((2, size, size, c))
  np.testing.assert_allclose(run(op, x), np_sep_conv(x, w, k, stride),
                             atol=1e-4, rtol=1e-4)


def test_sep_conv_stride_2_samples_even_positions():
  # On 8x8, the stride-2 depthwise conv of the first block centres its
  # windows on input rows/cols 0, 2, 4, 6 (padded grid 1, 3, 5, 7): check the
  # first block alone, and that TF-"SAME"-style (0, 1) padding would differ.
  c, size = 4, 8
  op = ops.SepConv(c, 3, 2, name="sep")
  op.build((None, size, size, c))
  w = randomize_weights(op, seed=3)
  x = random_input((1, size, size, c), seed=4)
  # Block 1 = the first five layers of the chain (bn1, relu1, pad1,
  # depthwise1, pointwise1), run one by one in inference mode.
  block1 = op._chain[:5]
  assert [layer.name for layer in block1] == [
      "bn1", "relu1", "pad1", "depthwise1", "pointwise1"]
  y = tf.constant(x, tf.float32)
  for layer in block1:
    y = layer(y, training=False) if "bn" in layer.name else layer(y)
  expected = np_sep_block(x, w, 1, 3, 2)
  np.testing.assert_allclose(y.numpy(), expected, atol=1e-4, rtol=1e-4)
  # The reference centres: output (i, j) <- input (2i, 2j).
  pre = relu(np_bn(x, w, "bn1/"))
  kernel = w["depthwise1/kernel"][:, :, :, 0]
  padded = np_pad(pre, 1)
  by_hand = np.einsum("hwc,hwc->c", padded[0, 4:7, 2:5], kernel)  # centre 4,2
  dw = np_depthwise(pre, w["depthwise1/kernel"], 2, pad=1)
  np.testing.assert_allclose(dw[0, 2, 1], by_hand, atol=1e-6)
  # Asymmetric (0, 1) padding samples other positions: the test can tell.
  shifted = np.pad(pre, ((0, 0), (0, 2), (0, 2), (0, 0)))
  same_style = 0.0
  for i, j, patch in _windows(shifted, 3, 2, 1):
    same_style = same_style + patch * kernel[i, j]
  same_style = np_conv(same_style, w["pointwise1/kernel"])
  assert not np.allclose(same_style, expected, atol=1e-3)


@pytest.mark.parametrize("size", (8, 7))
def test_reduce_conv_matches_reference(size):
  c = 4
  op = ops.make_op("id", c, 2)
  op.build((None, size, size, c))
  w = randomize_weights(op)
  x = random_input((2, size, size, c))
  expected = np_conv(np_bn(x, w, "bn/"), w["conv/kernel"], stride=2)
  np.testing.assert_allclose(run(op, x), expected, atol=1e-4, rtol=1e-4)


def test_ops_use_pytorch_batch_norm_defaults():
  op = ops.make_op("sep3", 4, 1)
  op.build((None, 8, 8, 4))
  bns = [layer for layer in op._chain
         if isinstance(layer, batch_norm.BatchNorm)]
  assert len(bns) == 2
  for bn in bns:
    assert bn.epsilon == pytest.approx(1e-5)
    assert bn.momentum == pytest.approx(0.9)


# (e) unknown primitive names.
def test_check_primitives_rejects_unknown_names():
  with pytest.raises(ValueError) as info:
    ops.check_primitives(["sep3", "conv7", "skip"])
  assert isinstance(info.value, ConfigError)
  message = str(info.value)
  assert "conv7" in message and "skip" in message
  for name in ops.PRIMITIVES:
    assert name in message, f"valid primitive {name} not listed: {message}"


def test_check_primitives_accepts_valid_and_rejects_empty_or_duplicates():
  assert ops.check_primitives(["max", "sep3"]) == ("max", "sep3")
  assert ops.check_primitives(ops.PRIMITIVES) == ops.PRIMITIVES
  with pytest.raises(ConfigError, match="at least one"):
    ops.check_primitives([])
  with pytest.raises(ConfigError, match="twice"):
    ops.check_primitives(["max", "max"])


def test_make_op_rejects_unknown_name():
  with pytest.raises(ConfigError, match="valid primitives are"):
    ops.make_op("zero", 4, 1)


# (f) constructor validation.
@pytest.mark.parametrize("factory,argument,received", (
    (lambda: ops.SepConv(0), "channels", "channels=0"),
    (lambda: ops.DilConv(0), "channels", "channels=0"),
    (lambda: ops.Pool3x3(0), "channels", "channels=0"),
    (lambda: ops.Identity(0), "channels", "channels=0"),
    (lambda: ops.ReduceConv(0), "channels", "channels=0"),
    (lambda: ops.SepConv(-3), "channels", "channels=-3"),
    (lambda: ops.SepConv(4.0), "channels", "channels=4.0"),
    (lambda: ops.SepConv(4, stride=3), "stride", "stride=3"),
    (lambda: ops.DilConv(4, stride=3), "stride", "stride=3"),
    (lambda: ops.Pool3x3(4, stride=3), "stride", "stride=3"),
    (lambda: ops.Identity(4, stride=2), "stride", "stride=2"),
    (lambda: ops.ReduceConv(4, stride=1), "stride", "stride=1"),
    (lambda: ops.SepConv(4, kernel_size=4), "kernel_size", "kernel_size=4"),
    (lambda: ops.DilConv(4, kernel_size=4), "kernel_size", "kernel_size=4"),
    (lambda: ops.DilConv(4, dilation=0), "dilation", "dilation=0"),
    (lambda: ops.Pool3x3(4, pool_type="min"), "pool_type", "pool_type='min'"),
))
def test_constructor_validation(factory, argument, received):
  with pytest.raises(ValueError) as info:
    factory()
  message = str(info.value)
  assert f"`{argument}`" in message or argument in message, message
  assert f"Received: {received}" in message, message


def test_op_rejects_wrong_input_channels():
  op = ops.SepConv(4, 3, 1)
  with pytest.raises(ValueError, match="expects 4 input channels"):
    op.build((None, 8, 8, 5))


def test_op_registry_factories_are_keyword_only():
  with pytest.raises(TypeError):
    ops.OPS["sep3"](4, 1, "sep3")
