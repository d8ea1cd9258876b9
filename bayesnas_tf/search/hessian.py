"""Hessian diagonal of the data loss with respect to every gate (DESIGN.md 6).

The loss is the cross-entropy summed over the examples of a batch (the
official convention: the gate Hessian is a batch sum, ALGORITHM.md 3.4.3),
with batch norm in inference mode. Every function returns one tensor per
cell, (num_edges, num_ops + 1), laid out like `SwitchedEdge.gates()`.

* `ggn`: the exact generalised Gauss-Newton diagonal. The gates are tiled per
  example (zero offsets of shape (B, E, G) added inside the tape), so one
  backward pass gives every example's gate gradient J_b^T v. With the CE
  curvature A_b = diag(p_b) - p_b p_b^T = L_b L_b^T, L_b[:, k] =
  sqrt(p_bk)(e_k - p_b), the diagonal is sum_b sum_k (J_b^T L_b[:, k])^2:
  one forward and K backward passes. In a network of ReLU, pooling, identity,
  convolutions and inference-mode BN the logits are multilinear in the gates
  (each gate multiplies each path at most once), so d^2 z / dw^2 = 0 and the
  GGN diagonal *is* the exact Hessian diagonal.
* `ggn_mc`: one label y~ ~ p per example; E[(p - e_y~)(p - e_y~)^T] = A, so
  the squared per-example gradient is an unbiased estimate (one backward).
* `exact`: one Hessian-vector product per gate (nested tapes); an oracle for
  tests and small models.
* `diag_backprop`: the paper's layer-wise diagonal back-propagation
  (ALGORITHM.md 3.4.2), one forward and one backward pass of a "shadow"
  network; an approximation that drops off-diagonal curvature terms. Its
  shadow network walks one family's layers, so the supernet provides it
  (`special_hessian`, layers/gated.py; the DAG supernet's is
  spaces/dag/diag_backprop.py).
"""

from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from bayesnas_tf.config import HESSIAN_METHODS


def _float_logits(logits):
  """Curvature arithmetic stays in float32 (or float64) under mixed precision."""
  if logits.dtype in (tf.float16, tf.bfloat16):
    return tf.cast(logits, tf.float32)
  return logits


def _forward_with_offsets(net, images):
  offsets = net.zero_gate_offsets(tf.shape(images)[0])
  tape = tf.GradientTape(persistent=True)
  with tape:
    tape.watch(offsets)
    logits = _float_logits(net(images, training=False, gate_offsets=offsets))
  return tape, offsets, logits


def _squared_sum(tape, logits, offsets, output_gradients):
  grads = tape.gradient(logits, offsets, output_gradients=output_gradients,
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  return [tf.reduce_sum(tf.square(tf.cast(g, output_gradients.dtype)), axis=0)
          for g in grads]


def ggn_diagonal(net, images) -> List[tf.Tensor]:
  """Exact Gauss-Newton diagonal, summed over the batch (labels not needed)."""
  tape, offsets, logits = _forward_with_offsets(net, images)
  probs = tf.nn.softmax(logits)
  num_classes = logits.shape[-1]
  # Columns of L: columns[k] = sqrt(p_k) (e_k - p), shape (K, B, K).
  eye = tf.eye(num_classes, dtype=probs.dtype)
  columns = (tf.transpose(tf.sqrt(probs))[:, :, tf.newaxis] *
             (eye[:, tf.newaxis, :] - probs[tf.newaxis]))

  def body(k, totals):
    squares = _squared_sum(tape, logits, offsets, columns[k])
    return k + 1, [a + b for a, b in zip(totals, squares)]

  # A while loop, so a traced function holds one backward pass, not K.
  _, total = tf.while_loop(
      lambda k, _: k < num_classes, body,
      (tf.constant(0), [tf.zeros(o.shape[1:], probs.dtype) for o in offsets]))
  return total


def _mix32(x):
  """MurmurHash3's 32-bit finaliser: a bijection that scrambles every bit."""
  shift = tf.bitwise.right_shift
  x = tf.bitwise.bitwise_xor(x, shift(x, tf.constant(16, tf.uint32)))
  x *= tf.constant(0x85EBCA6B, tf.uint32)
  x = tf.bitwise.bitwise_xor(x, shift(x, tf.constant(13, tf.uint32)))
  x *= tf.constant(0xC2B2AE35, tf.uint32)
  return tf.bitwise.bitwise_xor(x, shift(x, tf.constant(16, tf.uint32)))


def stateless_uniform_hash(shape, seed) -> tf.Tensor:
  """U(0, 1) float32 from a counter hash of (seed, position).

  Integer arithmetic only, so the plain graph and XLA give the same numbers
  (TF's stateless RNG kernels and XLA's differ for the same seed).
  """
  xor = tf.bitwise.bitwise_xor
  seed = tf.cast(seed, tf.uint32)
  key = _mix32(xor(seed[0], _mix32(seed[1] + tf.constant(0x9E3779B9, tf.uint32))))
  counter = tf.cast(tf.reshape(tf.range(tf.reduce_prod(shape)), shape),
                    tf.uint32)
  bits = _mix32(_mix32(xor(counter, key)) + key)
  # The top 24 bits, centred in their bin: strictly inside (0, 1).
  top = tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32))
  return (tf.cast(top, tf.float32) + 0.5) / float(1 << 24)


def sample_categorical(logits, seed) -> tf.Tensor:
  """One label per row of `logits`, y ~ softmax(logits), by the Gumbel-max
  trick: argmax(logits + G) with G = -log(-log U) is exactly categorical.
  With the hash uniforms it gives the same labels with and without XLA
  (`tf.random.stateless_categorical` does not compile with XLA at all)."""
  uniform = stateless_uniform_hash(tf.shape(logits), seed)
  gumbel = -tf.math.log(-tf.math.log(uniform))
  return tf.argmax(tf.cast(logits, tf.float32) + gumbel, axis=-1)


def ggn_mc_diagonal(net, images, seed) -> List[tf.Tensor]:
  """One-sample Monte Carlo estimate of the GGN diagonal (stateless `seed`)."""
  tape, offsets, logits = _forward_with_offsets(net, images)
  probs = tf.nn.softmax(logits)
  sampled = sample_categorical(logits, seed)
  residual = probs - tf.one_hot(sampled, logits.shape[-1], dtype=probs.dtype)
  result = _squared_sum(tape, logits, offsets, residual)
  del tape
  return result


def exact_diagonal(net, images, labels) -> List[tf.Tensor]:
  """Exact Hessian diagonal, one Hessian-vector product per gate.

  For tests and small models only (one double-backward pass per gate). The
  HVPs run in a `tf.while_loop` (`jacobian(experimental_use_pfor=False)`):
  the pfor-vectorised jacobian returns zero second derivatives through some
  pooling ops (DESIGN.md 6), the plain loop does not.
  """
  variables = net.arch_variables
  with tf.GradientTape(persistent=True) as outer:
    with tf.GradientTape() as inner:
      logits = _float_logits(net(images, training=False))
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=tf.cast(labels, tf.int32), logits=logits))
    # Gates of pruned (uncomputed) ops are unconnected: their rows are 0.
    grads = inner.gradient(loss, variables,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
    flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
  rows = outer.jacobian(flat, variables, experimental_use_pfor=False,
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  del outer
  # Row i of the Hessian restricted to variable v; keep the diagonal entries.
  diagonal, offset = [], 0
  for v, row in zip(variables, rows):
    size = int(v.shape.num_elements())
    block = tf.reshape(row[offset:offset + size], [size, size])
    diagonal.append(tf.linalg.diag_part(block))
    offset += size
  # Regroup each edge's gate variables ([w (O,), w_all ()], or a tree edge's
  # single [w (1,)]) into (E, G) per cell.
  result, index = [], 0
  for cell in net.cells:
    edges = []
    for edge in cell.edges:
      count = len(edge.gate_variables)
      edges.append(tf.concat(diagonal[index:index + count], axis=0))
      index += count
    result.append(tf.stack(edges))
  return result


def gate_hessian(net, images, labels, method: str = "ggn",
                 seed: Optional[tf.Tensor] = None) -> List[tf.Tensor]:
  """Dispatches to the estimator named by `method` (see module doc)."""
  if method == "ggn":
    return ggn_diagonal(net, images)
  if method == "ggn_mc":
    if seed is None:
      raise ValueError("ggn_mc needs a stateless `seed` (shape (2,)).")
    return ggn_mc_diagonal(net, images, seed)
  if method == "exact":
    return exact_diagonal(net, images, labels)
  if method not in HESSIAN_METHODS:
    raise ValueError(
        f"unknown Hessian method {method!r}; valid methods are {HESSIAN_METHODS}")
  # An estimator of one family's supernet only (diag_backprop: the DAG's).
  special = net.special_hessian(method, images)
  if special is None:
    raise ValueError(f"--hessian={method} is not available for a "
                     f"{type(net).__name__}")
  return special
