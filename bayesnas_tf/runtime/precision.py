"""Keras dtype policies for every mode (`--dtype_policy`) and loss scaling.

Policies: `float32`, `mixed_float16` and `mixed_bfloat16` (Keras 3 names).
Under a mixed policy every variable, the gates included, stays float32 and
the layers compute in float16/bfloat16 (Keras casts a float32 variable to the
compute dtype when a layer reads it). What needs range or precision stays in
float32 or float64:

* the gate Hessian: the whole Hessian pass runs the network under the
  float32 policy (`float32_policy`), on the same float32 variables, so the
  curvature a mixed-precision search uses equals a float32 search's;
* the prior update (eq. 17-20): float64 NumPy/TF arithmetic on float32
  reads of the variables (search/prior.py);
* the group-lasso penalty (eq. 21): computed from the float32 gate
  variables outside any layer, so no autocast applies;
* the loss: logits are cast to float32 before the softmax cross-entropy.

float16 has a narrow range, so its gradients are loss scaled: `LossScale`
is Keras's `LossScaleOptimizer` rule (scale 2^15, halve and skip the step on
an inf/NaN gradient, double after 2,000 finite steps) for custom loops that
apply one backward pass with several optimizers (the search's weights and
gates), so both optimizers skip the same steps. bfloat16 has float32's range
and needs no scaling.

mixed_float16 is for GPUs: a CPU has no float16 arithmetic units (TF emulates
it, slower than float32), so the command line refuses it on a machine
without a GPU (`check_supported`); the layers themselves run under it
anywhere (Keras's layer tests use it on CPUs).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from bayesnas_tf.config import DTYPE_POLICIES
from bayesnas_tf.errors import ConfigError

INITIAL_LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH_STEPS = 2000


def check_supported(policy: str) -> None:
  """Refuses a policy this machine cannot run usefully (one clear line)."""
  if policy not in DTYPE_POLICIES:
    raise ConfigError(
        f"--dtype_policy must be one of {', '.join(DTYPE_POLICIES)}; "
        f"received dtype_policy={policy!r}")
  if policy == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
    raise ConfigError(
        "--dtype_policy=mixed_float16 needs a GPU (this machine has none, and "
        "a CPU emulates float16 more slowly than float32); use "
        "--dtype_policy=mixed_bfloat16 on CPUs and TPUs, or float32")


def needs_loss_scale(policy) -> bool:
  return keras.dtype_policies.get(policy).compute_dtype == "float16"


@contextlib.contextmanager
def policy_scope(policy: str) -> Iterator[None]:
  """Layers created inside get `policy` (Keras's global policy, restored on
  exit, so a run leaves no global state behind)."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def _layers_of(model) -> list:
  found, stack, seen = [], [model], set()
  while stack:
    layer = stack.pop()
    if id(layer) in seen:
      continue
    seen.add(id(layer))
    found.append(layer)
    stack.extend(getattr(layer, "_layers", []))
  return found


@contextlib.contextmanager
def float32_policy(model) -> Iterator[None]:
  """`model` and every layer in it compute in float32 inside the block.

  Used while a function is traced (the trace is what runs later): the
  Hessian of a mixed-precision search is the float32 network's Hessian on
  the same variables. Policies are restored on exit.
  """
  layers = [l for l in _layers_of(model)
            if isinstance(l, keras.layers.Layer) and l.compute_dtype != "float32"]
  previous = [l.dtype_policy for l in layers]
  for layer in layers:
    layer.dtype_policy = "float32"
  try:
    yield
  finally:
    for layer, policy in zip(layers, previous):
      layer.dtype_policy = policy


Update = Tuple[keras.optimizers.Optimizer, Sequence[tf.Tensor],
               Sequence[tf.Variable]]


class LossScale(tf.Module):
  """Dynamic loss scaling for a custom step with one or more optimizers.

  In the replica function, after the tape's block:
      grads = loss_scale.gradient(tape, loss, variables)
      loss_scale.apply([(optimizer, grads, variables), ...])
  `gradient` is the gradient of the scaled loss; `apply` divides the
  gradients by the scale, and applies every optimizer only when all
  gradients of all replicas are finite; otherwise it skips the
  step and halves the scale. After `growth_steps` finite steps in a row the
  scale doubles. Keras's `LossScaleOptimizer` does the same for a single
  optimizer.
  """

  def __init__(self, initial_scale: float = INITIAL_LOSS_SCALE,
               growth_steps: int = LOSS_SCALE_GROWTH_STEPS):
    super().__init__(name="loss_scale")
    if not initial_scale > 0:
      raise ValueError(f"`initial_scale` must be > 0. Received: "
                       f"initial_scale={initial_scale!r}.")
    self.growth_steps = int(growth_steps)
    # Every replica computes the same value; keep the first replica's.
    aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
    self.scale_value = tf.Variable(float(initial_scale), trainable=False,
                                   dtype=tf.float32, aggregation=aggregation,
                                   name="scale")
    self.finite_steps = tf.Variable(0, trainable=False, dtype=tf.int64,
                                    aggregation=aggregation, name="finite_steps")

  def gradient(self, tape: tf.GradientTape, loss: tf.Tensor, variables):
    """d(scale * loss)/d variables, for a `loss` the tape recorded.

    The scale enters as the output gradient, not as a multiplication: a
    `loss * scale` written after the tape's block is not recorded, and its
    gradients would all be None (a silently skipped update).
    """
    return tape.gradient(loss, variables,
                         output_gradients=tf.cast(self.scale_value, loss.dtype))

  @staticmethod
  def _all_finite(grads) -> tf.Tensor:
    flags = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)

  def apply(self, updates: Sequence[Update]) -> tf.Tensor:
    """Unscales and applies `updates` (optimizer, grads, variables) or skips
    them all; returns whether the step was applied."""
    context = tf.distribute.get_replica_context()
    inverse = 1.0 / self.scale_value
    unscaled = [(opt, [None if g is None else g * tf.cast(inverse, g.dtype)
                       for g in grads], list(variables))
                for opt, grads, variables in updates]
    finite = self._all_finite([g for _, grads, _ in unscaled for g in grads])
    if context is not None and context.num_replicas_in_sync > 1:
      # Replicas hold different (not yet all-reduced) gradients: the step is
      # skipped everywhere when any replica overflowed.
      bad = context.all_reduce(tf.distribute.ReduceOp.SUM,
                               tf.cast(tf.logical_not(finite), tf.float32))
      finite = bad == 0.0
    if (context is None or context.num_replicas_in_sync == 1 or
        tf.__internal__.distribute.strategy_supports_no_merge_call()):
      self._apply_or_skip(finite, unscaled)
    else:
      # Optimizers call merge_call, which a cond in replica context cannot
      # hold: decide in cross-replica context (as Keras's
      # LossScaleOptimizer does).
      def cross_replica(distribution, finite, unscaled):
        first = distribution.experimental_local_results(finite)[0]

        def apply_all():
          distribution.extended.call_for_each_replica(
              self._apply_updates, args=(unscaled,))
          self._grow()
        tf.cond(first, apply_all, self._shrink)
      context.merge_call(cross_replica, args=(finite, unscaled))
    return finite

  def _apply_or_skip(self, finite, unscaled) -> None:
    def apply_all():
      self._apply_updates(unscaled)
      self._grow()
    tf.cond(finite, apply_all, self._shrink)

  @staticmethod
  def _apply_updates(unscaled) -> None:
    for optimizer, grads, variables in unscaled:
      optimizer.apply_gradients(zip(grads, variables))

  def _grow(self) -> None:
    grow = self.finite_steps + 1 >= self.growth_steps
    self.scale_value.assign(tf.where(grow, self.scale_value * 2.0,
                                     self.scale_value))
    self.finite_steps.assign(tf.where(grow, tf.constant(0, tf.int64),
                                      self.finite_steps + 1))

  def _shrink(self) -> None:
    self.scale_value.assign(self.scale_value * 0.5)
    self.finite_steps.assign(0)


def make_loss_scale(policy: str) -> Optional[LossScale]:
  """A `LossScale` for float16 compute, None otherwise (create it under the
  strategy's scope)."""
  return LossScale() if needs_loss_scale(policy) else None
