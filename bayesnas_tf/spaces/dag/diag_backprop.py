"""`--hessian=diag_backprop`: the paper's gate Hessian (ALGORITHM.md 3.4.2).

Becker-LeCun layer-wise diagonal Hessian back-propagation, the estimator of
the paper's App. C, computed with the corrected "shadow network" of
ALGORITHM.md 3.4.5 instead of the official per-layer Python loops.

The recursion. For a linear map y = A x the diagonal Hessian of the loss is
propagated as H_x = (A o A)^T H_y (o: elementwise product), i.e. the
off-diagonal part of H_y is dropped at every layer; a ReLU multiplies by
f'(a)^2 = 1[a > 0] of the example's own pre-activation (f'' = 0, so the D
term of C.1 vanishes, 3.4.2); a scalar gate y = w o(x) contributes
H_w = sum o^2 H_y and passes H_o = w^2 H_y on (C.3). The start is the
diagonal of the cross-entropy curvature, H_z = p (1 - p) per example (the
full diagonal, not the official target-only entry, 3.4.4 quirk 6).

The shadow network. (A o A)^T H_y is the vector-Jacobian product of the map
x' -> (A o A) x', the same op with squared coefficients: a conv with W^2, a
depthwise conv with W^2, a dense layer with W^2 (no bias), inference BN with
(gamma / sqrt(var + eps))^2, an average pool of k x k with 1/k^4 per window
(count_include_pad: the padding is explicit), a global average pool with
1/(HW)^2, zero padding and strided slicing as they are, a max pool with the
routing of the real input's argmax, a ReLU with the real pre-activation's
mask. So a forward pass of shadow activations x' next to the real ones x,
in which every gated edge computes

    u' = w_all^2 x'   + eps_all sg(x^2)                 (edge input u = w_all x)
    y' = sum_o w_o^2 op'_o(u') + eps_o sg(op_o(u)^2)    (edge output y)

(sg = stop_gradient), is linear in (x', eps); evaluated at x' = 0, eps = 0,
the gradient of <H_z, z'> with respect to eps_g is exactly the
back-propagated sum_{b,c,h,w} o_g^2 H_y of every gate g, summed over the
batch (the official convention). One real forward pass, one shadow forward
pass and one backward pass give all gate Hessians, per example and without
any batch averaging of H or of the activation derivatives (3.4.4 quirk 7).

What is dropped (the approximation): every off-diagonal term of the Hessian
with respect to an activation -- between the positions and channels of a
feature map, between the branches that leave one node and meet again, and
between the logits (-p_k p_l). On a chain of single-unit layers nothing is
dropped and the result is the exact Gauss-Newton diagonal with the
curvature diag(p(1-p)) (ALGORITHM.md 9.2, invariant 10).

Pruned ops are not computed (as in the real network), so their gates, and
every gate of an edge whose w_all is masked, get H = 0 exactly.

The walk mirrors the layers' `call` methods without touching them; a shadow
of `None` stands for x' = 0 with no gate upstream, so nothing before the
first gated edge is computed twice.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import tensorflow as tf

from bayesnas_tf.layers.gated import GatedCells
from bayesnas_tf.layers.switched_edge import SwitchedEdge
from bayesnas_tf.nn import diag_rules
from bayesnas_tf.nn import init
from bayesnas_tf.nn.diag_rules import Pair
from bayesnas_tf.nn.diag_rules import add
from bayesnas_tf.nn.diag_rules import cross_entropy_curvature
from bayesnas_tf.nn.diag_rules import real
from bayesnas_tf.nn.diag_rules import shadow_dtype
from bayesnas_tf.spaces.dag import ops
from bayesnas_tf.spaces.dag.bayes_cell import BayesCell
from bayesnas_tf.spaces.dag.channel_reduce import ChannelReduce


# --- composite layers ---------------------------------------------------------
def _sequence_op(op, x, shadow, dtype) -> Pair:
  # SepConv, Pool3x3, ReduceConv: `call` applies `chain` in order; Identity
  # has an empty chain.
  for layer in op.chain:
    x, shadow = _shadow(layer, x, shadow, dtype)
  return x, shadow


def _dil_conv(op: ops.DilConv, x, shadow, dtype) -> Pair:
  # Mirrors DilConv.call: BN -> ReLU -> pad -> dilated conv -> [::s] -> 1x1.
  for layer in (op.bn, op.relu, op.pad, op.conv):
    x, shadow = _shadow(layer, x, shadow, dtype)
  if op.stride > 1:
    # Strided slicing is a selection: (A o A) = A.
    x = x[:, ::op.stride, ::op.stride, :]
    if shadow is not None:
      shadow = shadow[:, ::op.stride, ::op.stride, :]
  return _shadow(op.pointwise, x, shadow, dtype)


def size_reduction(layer: ChannelReduce, x, shadow, dtype) -> Pair:
  """The size-reduction part of `ChannelReduce.call` (before its BN)."""
  if layer.size_reduct == "conv":
    return _shadow(layer.reduce_convs[0], x, shadow, dtype)
  if layer.size_reduct == "factorized":
    def shift(t):
      return tf.pad(t[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
    first = _shadow(layer.reduce_convs[0], x, shadow, dtype)
    second = _shadow(layer.reduce_convs[1], shift(x),
                     None if shadow is None else shift(shadow), dtype)
    y = tf.concat([first[0], second[0]], axis=-1)
    if shadow is None:
      return y, None
    return y, tf.concat([first[1], second[1]], axis=-1)
  return x, shadow


def _channel_reduce(layer: ChannelReduce, x, shadow, dtype) -> Pair:
  x, shadow = size_reduction(layer, x, shadow, dtype)
  for sublayer in (layer.bn, layer.relu, layer.conv):
    x, shadow = _shadow(sublayer, x, shadow, dtype)
  return x, shadow


def _switched_edge(edge: SwitchedEdge, x, shadow, gate_eps, dtype) -> Pair:
  """Mirrors `SwitchedEdge.call`; `gate_eps` (num_ops + 1,) are the dummy
  gates whose gradients are the Hessians (C.3: H_w = sum o^2 H_y)."""
  if not edge.active_ops:
    # A masked w_all (or every op pruned): zero output, zero Hessians.
    return edge(x, training=False), None
  gates = edge.gates()
  squared_gates = tf.square(tf.cast(gates, dtype))
  edge_input = init.scale_by(x, gates[-1])
  # H_{w_all} = sum x^2 H_u with x the raw edge input (3.4.3 step 7).
  edge_shadow = add(
      None if shadow is None else shadow * squared_gates[-1],
      gate_eps[-1] * tf.square(real(x, dtype)))
  total, total_shadow = None, None
  for index in edge.active_ops:
    out, out_shadow = _shadow(edge.mixed_op.candidate_ops[index], edge_input,
                              edge_shadow, dtype)
    term = init.scale_by(out, gates[index])
    total = term if total is None else total + term
    total_shadow = add(
        total_shadow,
        out_shadow * squared_gates[index]
        + gate_eps[index] * tf.square(real(out, dtype)))
  return total, total_shadow


def _concat_shadows(reals, shadows, dtype) -> Optional[tf.Tensor]:
  if all(s is None for s in shadows):
    return None
  return tf.concat([tf.zeros(tf.shape(r), dtype) if s is None else s
                    for r, s in zip(reals, shadows)], axis=-1)


def _bayes_cell(cell: BayesCell, inputs, shadows, gate_eps, dtype) -> Pair:
  """Mirrors `BayesCell.call`; `gate_eps` is (num_edges, num_ops + 1)."""
  states = {
      "in0": _shadow(cell.preprocess0, inputs[0], shadows[0], dtype),
      "in1": _shadow(cell.preprocess1, inputs[1], shadows[1], dtype)}
  spec = cell.cell_spec
  for node in spec.nodes:
    reals, node_shadow = [], None
    for index in spec.edges_into(node):
      src = spec.edges[index][0]
      out, out_shadow = _switched_edge(cell.edges[index], *states[src],
                                       gate_eps[index], dtype)
      reals.append(out)
      # A node feeding several edges passes the sum of their H back: the
      # cross terms between the branches are what the recursion drops.
      node_shadow = add(node_shadow, out_shadow)
    states[node] = (tf.add_n(reals), node_shadow)
  nodes = [states[n] for n in spec.nodes]
  return (tf.concat([real for real, _ in nodes], axis=-1),
          _concat_shadows([r for r, _ in nodes], [s for _, s in nodes], dtype))


def _supernet(net, images, gate_eps: Sequence[tf.Tensor],
              dtype) -> Pair:
  """Mirrors `SuperNet.call` in inference mode: (logits, shadow logits)."""
  x, shadow = _shadow(net.stem_pad, images, None, dtype)
  x, shadow = _shadow(net.stem_conv, x, shadow, dtype)
  prev_prev, prev = (x, shadow), (x, shadow)
  for cell, eps in zip(net.cells, gate_eps):
    out = _bayes_cell(cell, (prev[0], prev_prev[0]), (prev[1], prev_prev[1]),
                      eps, dtype)
    prev_prev, prev = prev, out
  x, shadow = prev
  for layer in (net.head_bn, net.head_relu, net.global_pool, net.classifier):
    x, shadow = _shadow(layer, x, shadow, dtype)
  return x, shadow


# The rules of plain layers (nn/diag_rules.py), then the supernet's own;
# most specific class first.
_LEAF_RULES = diag_rules.KERAS_RULES + (
    (ops.DilConv, _dil_conv),
    ((ops.SepConv, ops.Pool3x3, ops.Identity, ops.ReduceConv), _sequence_op),
    (ChannelReduce, _channel_reduce),
)


def _shadow(layer, x, shadow, dtype) -> Pair:
  return diag_rules.apply_rule(_LEAF_RULES, layer, x, shadow, dtype)


def shadow_call(layer, inputs, shadow=None, gate_eps=None) -> Pair:
  """Runs `layer` in inference mode next to its shadow.

  Args:
    layer: a primitive or Keras layer of the supernet, a `ChannelReduce`, a
      `SwitchedEdge`, a `BayesCell` or a `SuperNet`.
    inputs: the real input (a pair (in0, in1) for a `BayesCell`).
    shadow: the shadow input x' (a pair for a `BayesCell`); None means 0.
    gate_eps: the dummy gates of a `SwitchedEdge` (num_ops + 1,), a
      `BayesCell` (num_edges, num_ops + 1) or a `SuperNet` (one per cell).

  Returns:
    (output, shadow output); the shadow is None when it is identically 0.
  """
  dtype = shadow_dtype(layer)
  # The gated network of this family is the SuperNet (supernet.py, which
  # calls this module: it is not imported here).
  if isinstance(layer, GatedCells):
    return _supernet(layer, inputs, gate_eps, dtype)
  if isinstance(layer, BayesCell):
    return _bayes_cell(layer, inputs, shadow or (None, None), gate_eps, dtype)
  if isinstance(layer, SwitchedEdge):
    return _switched_edge(layer, inputs, shadow, gate_eps, dtype)
  return _shadow(layer, inputs, shadow, dtype)


def diag_backprop_diagonal(
    net, images,
    output_curvature: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
) -> List[tf.Tensor]:
  """Diagonal Hessian back-propagation for every gate of `net`.

  Args:
    net: the supernet; batch norm runs in inference mode.
    images: one batch.
    output_curvature: logits (B, K) -> the diagonal H_z (B, K) to start
      from; default `cross_entropy_curvature` (tests pass 1 for an MSE
      loss, where the chain case must match `tf.hessians`).

  Returns:
    One (num_edges, num_ops + 1) tensor per cell, laid out like
    `SwitchedEdge.gates()`, summed over the batch.
  """
  dtype = shadow_dtype(net)
  curvature_fn = output_curvature or cross_entropy_curvature
  gate_eps = [tf.zeros([cell.num_edges, len(net.primitives) + 1], dtype)
              for cell in net.cells]
  # Only the dummy gates are sources: the real pass and the squared weights
  # are constants to this tape, so its backward pass is the shadow's alone.
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(gate_eps)
    logits, shadow_logits = _supernet(net, images, gate_eps, dtype)
    if shadow_logits is None:  # Every edge is switched off.
      return [tf.zeros_like(e) for e in gate_eps]
    curvature = tf.stop_gradient(curvature_fn(tf.cast(logits, dtype)))
    target = tf.reduce_sum(curvature * shadow_logits)
  return tape.gradient(target, gate_eps,
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
