"""Hessian diagonal of the data loss with respect to conv/dense kernels.

The weight counterpart of `search/hessian.py`, with the same conventions:
cross-entropy summed over the batch, batch norm in inference mode, and the
exact generalised Gauss-Newton diagonal

    H_diag = sum_b sum_k (J_b^T L_b[:, k])^2,   L_b[:, k] = sqrt(p_bk)(e_k - p_b)

(A_b = diag(p_b) - p_b p_b^T = L_b L_b^T is the softmax CE curvature).
J_b^T L_b[:, k] is example b's gradient of the scalar L_b[:, k]^T z_b. With
BN in inference mode the examples do not interact, so ONE batched backward
pass per class gives every example's gradient g_b with respect to each
layer's kernel output; the example's kernel gradient is then
sum_q patch_bq (x) g_bq over the output positions q (Goodfellow's
per-example-gradient identity; patches from `tf.image.extract_patches`,
or the input itself for a dense layer), squared and summed over b. One
forward and K backward passes, no per-example loop.

In a network of ReLU, max/avg pooling, inference-mode BN, convolutions and
dense layers each logit is linear in any single weight (every path crosses a
layer once), so d^2 z / dw^2 = 0 and this GGN diagonal is the exact Hessian
diagonal (the tests check it against Hessian-vector products). It replaces
the paper's diagonal back-propagation (ALGORITHM.md 7, C.2), which
approximates the same quantity.

For a BN in inference mode, y = x_hat * gamma + beta, the per-example
gradients are sum_q x_hat_bq g_bq (gamma) and sum_q g_bq (beta).

`ggn_mc` samples one label per example instead of summing over classes
(E[(p - e_y)(p - e_y)^T] = A): one backward pass instead of K.

`diag_backprop` is the paper's own approximation of the same diagonal
(weight_diag_backprop.py): one forward and one backward pass of a shadow
network, ReLU/linear activations only.
"""

from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf

from bayesnas_tf.compress.weight_diag_backprop import weight_diag_backprop
from bayesnas_tf.config import COMPRESS_HESSIAN_METHODS

WEIGHT_HESSIAN_METHODS = COMPRESS_HESSIAN_METHODS


def _layer_inputs_as_rows(chain, index: int, inputs):
  """(B, positions, fan_in): what each output position's kernel reads."""
  layer = chain.layers[index]
  if chain.is_conv(index):
    kh, kw = layer.kernel_size
    patches = tf.image.extract_patches(
        inputs, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
        rates=[1, *layer.dilation_rate, 1], padding=layer.padding.upper())
    return tf.reshape(patches, [tf.shape(inputs)[0], -1, patches.shape[-1]])
  return tf.reshape(inputs, [tf.shape(inputs)[0], -1, inputs.shape[-1]])


def kernel_hessian_diagonal(chain, images, method: str = "ggn",
                            seed: Optional[tf.Tensor] = None,
                            unit_masks=None) -> Dict[int, tf.Tensor]:
  """Hessian diagonal of the batch-summed CE w.r.t. every weighted layer's
  kernel of `chain` (a `structure.CNNChain`) and every BN of
  `chain.bn_after` ((2, units): gamma, beta), keyed by layer index.

  Args:
    chain: the model; batch norm runs in inference mode.
    images: one batch.
    method: "ggn" (exact, K backward passes), "ggn_mc" (one sampled label)
      or "diag_backprop" (the paper's diagonal back-propagation).
    seed: stateless seed (shape (2,)) for "ggn_mc".
    unit_masks: removed units, as in `CNNChain.forward`.
  """
  if method not in WEIGHT_HESSIAN_METHODS:
    raise ValueError(f"unknown weight Hessian method {method!r}; valid: "
                     f"{WEIGHT_HESSIAN_METHODS}")
  if method == "diag_backprop":
    return weight_diag_backprop(chain, images, unit_masks)
  taps = {}
  with tf.GradientTape(persistent=True) as tape:
    logits = chain.forward(images, training=False, unit_masks=unit_masks, taps=taps)
    if logits.dtype in (tf.float16, tf.bfloat16):
      logits = tf.cast(logits, tf.float32)
    probs = tf.stop_gradient(tf.nn.softmax(logits))
    num_classes = int(logits.shape[-1])
    if method == "ggn":
      eye = tf.eye(num_classes, dtype=probs.dtype)
      # Column k of L_b: sqrt(p_bk)(e_k - p_b); target = sum_b L_b[:, k]^T z_b.
      targets = [tf.reduce_sum(
          tf.sqrt(probs[:, k:k + 1]) * (eye[k][tf.newaxis] - probs) * logits)
                 for k in range(num_classes)]
    else:
      if seed is None:
        raise ValueError("ggn_mc needs a stateless `seed` (shape (2,)).")
      sampled = tf.random.stateless_categorical(tf.stop_gradient(logits), 1, seed=seed)[:, 0]
      residual = probs - tf.one_hot(sampled, num_classes, dtype=probs.dtype)
      targets = [tf.reduce_sum(residual * logits)]
  indices = sorted(taps)
  rows = {i: (taps[i][0] if chain.is_batch_norm(i)
              else _layer_inputs_as_rows(chain, i, taps[i][0])) for i in indices}
  totals = {i: tf.zeros(chain.group_tensor_shape(i), logits.dtype) for i in indices}
  for target in targets:
    grads = tape.gradient(target, [taps[i][1] for i in indices],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    for i, g in zip(indices, grads):
      if chain.is_batch_norm(i):
        spatial = list(range(1, g.shape.rank - 1))
        per_example = tf.stack([tf.reduce_sum(rows[i] * g, axis=spatial),
                                tf.reduce_sum(g, axis=spatial)], axis=1)  # (B, 2, C)
        totals[i] += tf.reduce_sum(tf.square(per_example), axis=0)
        continue
      g = tf.reshape(g, [tf.shape(g)[0], -1, g.shape[-1]])          # (B, Q, out)
      per_example = tf.einsum("bqi,bqo->bio", rows[i], g)         # (B, fan_in, out)
      totals[i] += tf.reshape(tf.reduce_sum(tf.square(per_example), axis=0),
                              totals[i].shape)
  del tape
  return totals
