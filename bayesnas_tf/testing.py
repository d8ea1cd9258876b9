"""Test support: a small `run_layer_test`, modelled on Keras's (STYLE.md 1, 21).

This module is only imported by tests. It uses `assert` on purpose: a failed
check raises `AssertionError` with a message that names what went wrong.

`run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape)`
checks, in order:

1. serialization: `get_config()` -> `from_config()` gives an equal config
   (compared as `json.dumps(sort_keys=True)`) and the same attribute names,
   and so does `keras.saving.serialize_keras_object` -> JSON ->
   `deserialize_keras_object`;
2. build: `layer.build(input_shape)` (or `layer.build(*input_shapes)` for
   layers with several inputs) marks the layer built, and the number of
   trainable weights and of trainable scalars match the expected counts;
3. call: an eager call and a `tf.function` call on the same random input give
   the expected shape and dtype, and the same values;
4. training: one gradient step on sum(output ** 2) in training mode gives
   every trainable variable a non-None, finite gradient and changes every
   variable whose gradient is non-zero.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf


def is_shape(value) -> bool:
  """True for one shape (ints/None), False for a tuple of shapes."""
  return isinstance(value, (tuple, list)) and all(
      d is None or isinstance(d, (int, np.integer)) for d in value)


def shape_list(input_shape) -> list:
  """One shape or a tuple of shapes -> a list of shape tuples."""
  if is_shape(input_shape):
    return [tuple(input_shape)]
  return [tuple(s) for s in input_shape]


def random_inputs(shapes: Sequence[Sequence[int]], seed: int = 0,
                  dtype: str = "float32") -> list:
  rng = np.random.RandomState(seed)
  return [tf.constant(rng.standard_normal(s).astype(dtype)) for s in shapes]


def config_json(config: Dict[str, Any]) -> str:
  return json.dumps(config, sort_keys=True)


def num_params(variables) -> int:
  return int(sum(int(np.prod(v.shape)) for v in variables))


def check_serialization(layer_cls, init_kwargs: Dict[str, Any]):
  """Runs both serialization round trips; returns the (unbuilt) instance."""
  instance = layer_cls(**init_kwargs)
  config = instance.get_config()
  reference = config_json(config)

  revived = layer_cls.from_config(config)
  assert type(revived) is layer_cls, (
      f"from_config returned {type(revived).__name__}, not "
      f"{layer_cls.__name__}")
  assert config_json(revived.get_config()) == reference, (
      f"{layer_cls.__name__}: config changed by from_config:\n"
      f"{reference}\n!=\n{config_json(revived.get_config())}")
  missing = set(dir(instance)) ^ set(dir(revived))
  assert not missing, (
      f"{layer_cls.__name__}: attributes differ after from_config: "
      f"{sorted(missing)}")

  serialized = keras.saving.serialize_keras_object(instance)
  serialized = json.loads(json.dumps(serialized))  # must be JSON-able
  revived = keras.saving.deserialize_keras_object(serialized)
  assert type(revived) is layer_cls, (
      f"deserialize_keras_object returned {type(revived).__name__}, not "
      f"{layer_cls.__name__}")
  assert config_json(revived.get_config()) == reference, (
      f"{layer_cls.__name__}: config changed by serialize/deserialize:\n"
      f"{reference}\n!=\n{config_json(revived.get_config())}")
  return instance


def check_gradients(layer, inputs, call_kwargs, learning_rate: float = 1e-2):
  """One SGD step on sum(output^2), training mode; checks every gradient."""
  variables = list(layer.trainable_variables)
  with tf.GradientTape() as tape:
    outputs = layer(*inputs, training=True, **call_kwargs)
    loss = tf.reduce_sum(tf.square(outputs))
  assert np.isfinite(float(loss)), f"{layer.name}: loss is not finite: {loss}"
  grads = tape.gradient(loss, variables)
  for variable, grad in zip(variables, grads):
    assert grad is not None, (
        f"{layer.name}: no gradient for trainable variable {variable.path}")
    grad = tf.convert_to_tensor(grad)
    assert bool(tf.reduce_all(tf.math.is_finite(grad))), (
        f"{layer.name}: non-finite gradient for {variable.path}")
  before = [np.array(v.numpy()) for v in variables]
  for variable, grad in zip(variables, grads):
    variable.assign_sub(learning_rate * tf.convert_to_tensor(grad))
  for variable, grad, old in zip(variables, grads, before):
    if np.any(np.asarray(grad) != 0):
      assert np.any(variable.numpy() != old), (
          f"{layer.name}: {variable.path} did not change after a step")
  return grads


def run_layer_test(layer_cls, init_kwargs: Dict[str, Any], input_shape,
                   expected_output_shape,
                   expected_num_trainable_weights: Optional[int] = None,
                   expected_num_trainable_params: Optional[int] = None,
                   call_kwargs: Optional[Dict[str, Any]] = None,
                   expected_num_non_trainable_weights: Optional[int] = None,
                   run_training_check: bool = True,
                   atol: float = 1e-5, rtol: float = 1e-5,
                   seed: int = 0):
  """Serialization, build, eager/graph call and gradient checks for a layer.

  Args:
    layer_cls: a registered Keras layer class.
    init_kwargs: constructor arguments.
    input_shape: a fully defined shape, or a tuple of shapes for a layer whose
      `build` takes several inputs (e.g. `BayesCell.build(in0, in1)`); the
      layer is then called with the inputs as positional arguments.
    expected_output_shape: the output shape of a call on `input_shape`.
    expected_num_trainable_weights: number of trainable variables.
    expected_num_trainable_params: number of trainable scalars.
    call_kwargs: extra keyword arguments for every call (e.g. `weights`).
    expected_num_non_trainable_weights: number of non-trainable variables.
    run_training_check: whether to run the gradient step.
    atol, rtol: tolerance between the eager and the `tf.function` outputs.
    seed: seed of the random input.

  Returns:
    The built layer used for the call and gradient checks.
  """
  call_kwargs = dict(call_kwargs or {})
  shapes = shape_list(input_shape)
  expected_output_shape = tuple(expected_output_shape)

  # 1. Serialization.
  check_serialization(layer_cls, init_kwargs)

  # 2. Build and weight counts.
  layer = layer_cls(**init_kwargs)
  layer.build(*shapes)
  assert layer.built, f"{layer.name} is not built after build()"
  if expected_num_trainable_weights is not None:
    got = len(layer.trainable_weights)
    assert got == expected_num_trainable_weights, (
        f"{layer.name}: expected {expected_num_trainable_weights} trainable "
        f"weights, got {got}: {[v.path for v in layer.trainable_weights]}")
  if expected_num_non_trainable_weights is not None:
    got = len(layer.non_trainable_weights)
    assert got == expected_num_non_trainable_weights, (
        f"{layer.name}: expected {expected_num_non_trainable_weights} "
        f"non-trainable weights, got {got}")
  if expected_num_trainable_params is not None:
    got = num_params(layer.trainable_weights)
    assert got == expected_num_trainable_params, (
        f"{layer.name}: expected {expected_num_trainable_params} trainable "
        f"parameters, got {got}")
  static_shape = tuple(layer.compute_output_shape(*shapes))
  assert static_shape == expected_output_shape, (
      f"{layer.name}: compute_output_shape gives {static_shape}, expected "
      f"{expected_output_shape}")

  # 3. Eager and graph calls agree.
  inputs = random_inputs(shapes, seed=seed)
  eager = layer(*inputs, **call_kwargs)
  assert tuple(eager.shape) == expected_output_shape, (
      f"{layer.name}: eager output shape {tuple(eager.shape)}, expected "
      f"{expected_output_shape}")
  assert eager.dtype == inputs[0].dtype, (
      f"{layer.name}: output dtype {eager.dtype}, input {inputs[0].dtype}")
  assert bool(tf.reduce_all(tf.math.is_finite(eager))), (
      f"{layer.name}: non-finite eager output")
  graph_fn = tf.function(lambda *xs: layer(*xs, **call_kwargs))
  graph = graph_fn(*inputs)
  assert tuple(graph.shape) == expected_output_shape, (
      f"{layer.name}: tf.function output shape {tuple(graph.shape)}, "
      f"expected {expected_output_shape}")
  assert graph.dtype == eager.dtype, (
      f"{layer.name}: tf.function dtype {graph.dtype} != eager {eager.dtype}")
  np.testing.assert_allclose(
      graph.numpy(), eager.numpy(), atol=atol, rtol=rtol,
      err_msg=f"{layer.name}: eager and tf.function outputs differ")

  # 4. One training step.
  if run_training_check:
    check_gradients(layer, inputs, call_kwargs)
  return layer
