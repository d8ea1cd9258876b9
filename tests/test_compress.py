"""--mode=compress: models, grouping, the update, the weight Hessian, physical
slimming and the command line (ALGORITHM.md 7)."""

import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.compress import group_prior
from bayesnas_tf.compress import structure
from bayesnas_tf.compress.weight_hessian import kernel_hessian_diagonal
from bayesnas_tf.compress import cnn_zoo
from conftest import MNIST, requires_shared_data, run_main, serve_without_project

THRESHOLD = 1.0 / (2 * np.pi * np.e)


def _randomize_batch_norms(model, seed=0):
  """Non-trivial BN statistics, so removed channels would leak relu(beta)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      shape = layer.gamma.shape
      layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
      layer.beta.assign(rng.normal(0, 0.5, shape))
      layer.moving_mean.assign(rng.normal(0, 0.5, shape))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))


def _small_cnn(input_shape=(8, 8, 1), classes=10, dtype=None, softmax=False):
  """A user's model: Sequential, BN, global pooling, dropout."""
  layers = [
      keras.Input(input_shape),
      keras.layers.Conv2D(6, 3, padding="same", name="c1", dtype=dtype),
      keras.layers.BatchNormalization(name="b1", dtype=dtype),
      keras.layers.ReLU(name="r1", dtype=dtype),
      keras.layers.MaxPooling2D(2, name="p1", dtype=dtype),
      keras.layers.Conv2D(8, 3, strides=1, padding="valid", activation="relu",
                          name="c2", dtype=dtype),
      keras.layers.Dropout(0.1, name="d1", dtype=dtype),
      keras.layers.Flatten(name="f", dtype=dtype),
      keras.layers.Dense(12, activation="relu", name="h", dtype=dtype),
      keras.layers.Dense(classes, activation="softmax" if softmax else None,
                         name="out", dtype=dtype),
  ]
  return keras.Sequential(layers, name="small_cnn")


# --- models -------------------------------------------------------------------
def test_lenet5_parameter_count_and_macs():
  model = cnn_zoo.lenet5((28, 28, 1), 10)
  assert model.count_params() == cnn_zoo.LENET5_PARAMS_MNIST == 431_080
  params, macs = structure.count_params_and_macs(structure.CNNChain(model))
  assert params == 431_080
  # conv1 24*24*500 + conv2 8*8*25,000 + 400,000 + 5,000.
  assert macs == 24 * 24 * 500 + 8 * 8 * 25_000 + 400_000 + 5_000


def test_vgg_width_multiplier():
  full = cnn_zoo.vgg_like((32, 32, 3), 10, 1.0)
  quarter = cnn_zoo.vgg_like((32, 32, 3), 10, 0.25)
  widths = [l.filters for l in quarter.layers if isinstance(l, keras.layers.Conv2D)]
  assert widths == [16, 16, 32, 32, 64, 64, 128]
  assert quarter.get_layer("dense1").units == 128
  # 7 convs (no bias) + 8 BN (gamma, beta trainable) + 2 dense layers.
  expected = (3 * 9 * 64 + 64 * 9 * 64 + 64 * 9 * 128 + 128 * 9 * 128 + 128 * 9 * 256 +
              256 * 9 * 256 + 256 * 9 * 512 + 2 * (64 * 2 + 128 * 2 + 256 * 2 + 512 + 512) +
              (2 * 2 * 512) * 512 + 512 + 512 * 10 + 10)
  trainable = sum(int(np.prod(v.shape)) for v in full.trainable_variables)
  assert trainable == expected


# --- chain analysis and groups ------------------------------------------------
def test_lenet5_chain_structure():
  chain = structure.CNNChain(cnn_zoo.lenet5((28, 28, 1), 10))
  names = lambda indices: [chain.layers[i].name for i in indices]
  assert names(chain.prunable) == ["conv1", "conv2", "dense1"]
  assert chain.layers[chain.final].name == "logits"
  assert {chain.layers[p].name: chain.layers[c].name for p, c in chain.consumer.items()} == {
      "conv1": "conv2", "conv2": "dense1", "dense1": "logits"}
  # conv2's units are read through Flatten of a 4x4x50 map.
  conv2 = chain.prunable[1]
  assert chain.flatten_spatial[conv2] == 16
  assert chain.layers[chain.mask_position[conv2]].name == "flatten"


def test_filter_groups_of_batch_normalised_layers_are_bn_scale_and_shift():
  model = cnn_zoo.vgg_like((32, 32, 3), 10, 0.125)
  chain = structure.CNNChain(model)
  # Every conv and dense1 is followed by its BN.
  assert len(chain.bn_after) == len(chain.prunable) == 8
  sets = {s.name: s for s in chain.group_sets(("filter", "channel"))}
  conv3 = sets["conv3/filter"]
  assert chain.layers[conv3.layer_index].name == "bn3"
  assert (conv3.num_groups, conv3.group_size) == (16, 2)
  bn3 = model.get_layer("bn3")
  bn3.beta.assign(np.arange(16, dtype=np.float32))
  view = conv3.view(chain.group_tensor(conv3.layer_index)).numpy()
  np.testing.assert_array_equal(view[5], [bn3.gamma.numpy()[5], 5.0])
  # Channel groups stay on the next layer's kernel.
  assert chain.layers[sets["conv3/channel"].layer_index].name == "conv4"


def test_group_views_select_filters_and_channels():
  model = cnn_zoo.lenet5((28, 28, 1), 10)
  chain = structure.CNNChain(model)
  sets = {s.name: s for s in chain.group_sets(("filter", "channel", "shape"))}
  assert {name: (s.num_groups, s.group_size) for name, s in sets.items()} == {
      "conv1/filter": (20, 25), "conv1/channel": (20, 1250),
      "conv2/filter": (50, 500), "conv2/channel": (50, 16 * 500),
      "dense1/filter": (500, 800), "dense1/channel": (500, 10),
      "conv1/shape": (25, 20), "conv2/shape": (500, 50)}
  conv2 = model.get_layer("conv2").kernel.numpy()
  dense1 = model.get_layer("dense1").kernel.numpy()
  view = sets["conv2/filter"].view(conv2).numpy()
  np.testing.assert_array_equal(view[7], conv2[..., 7].ravel())
  # Channel group c of conv2 = the rows of dense1 that read channel c of
  # the flattened (4, 4, 50) map: rows (h*4 + w)*50 + c.
  view = sets["conv2/channel"].view(dense1).numpy()
  rows = [(h * 4 + w) * 50 + 13 for h in range(4) for w in range(4)]
  np.testing.assert_array_equal(np.sort(view[13]), np.sort(dense1[rows].ravel()))
  conv2_channels = sets["conv1/channel"].view(conv2).numpy()
  np.testing.assert_array_equal(np.sort(conv2_channels[3]), np.sort(conv2[:, :, 3, :].ravel()))
  shape_view = sets["conv2/shape"].view(conv2).numpy()
  np.testing.assert_array_equal(shape_view[2 * 100 + 1 * 20 + 4], conv2[2, 1, 4, :])
  for group_set in sets.values():
    kernel = chain.kernel(group_set.layer_index).numpy()
    np.testing.assert_array_equal(group_set.unview(group_set.view(kernel)).numpy(), kernel)


@pytest.mark.parametrize("layer, fragment", [
    (lambda: keras.layers.LSTM(4), "LSTM"),
    (lambda: keras.layers.Conv2DTranspose(4, 3), "Conv2DTranspose"),
    (lambda: keras.layers.LayerNormalization(), "LayerNormalization"),
])
def test_unsupported_layers_are_named(layer, fragment):
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
  if fragment == "LSTM":
    x = keras.layers.Reshape((36, 4), name="reshape")(x)
  x = layer()(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(3)(x)
  with pytest.raises(structure.UnsupportedModelError) as info:
    structure.CNNChain(keras.Model(inputs, outputs))
  assert fragment in str(info.value)
  assert "unsupported layer" in str(info.value)


def test_branching_models_are_rejected():
  inputs = keras.Input((8, 8, 1))
  a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
  b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
  merged = keras.layers.Add(name="add")([a, b])
  outputs = keras.layers.Dense(3)(keras.layers.Flatten()(merged))
  with pytest.raises(structure.UnsupportedModelError, match="add"):
    structure.CNNChain(keras.Model(inputs, outputs))


# --- the update -----------------------------------------------------------------
def test_update_matches_hand_computed_numbers():
  # One dense layer (2 inputs, 2 units): filter groups are the columns.
  group_set = structure.GroupSet("d/filter", "filter", 0, 0, (2, 2), (2, 2), (1, 0))
  kernel = np.array([[3.0, 0.01], [4.0, 0.02]])
  hessian = np.array([[2.0, 8.0], [6.0, 8.0]])
  lam = 2.0
  gamma_prev = np.array([1.0, 0.5])
  result = group_prior.update_group_set(group_set, kernel, hessian, gamma_prev,
                                        np.ones(2), np.ones(2, bool), lam, THRESHOLD)
  # Unit 0: H' = [1, 3]; alpha = H'/(1 + gamma H') = [1/2, 3/4];
  # omega = sqrt(5/4); gamma = ||(3, 4)|| / omega = 5 / sqrt(1.25).
  # Unit 1: H' = [4, 4], gamma_prev 0.5: alpha = 4/3 each; omega = sqrt(8/3);
  # gamma = sqrt(0.0005) / sqrt(8/3) = 0.01369 < 1/(2 pi e): pruned.
  np.testing.assert_allclose(result.omega, [np.sqrt(1.25), np.sqrt(8 / 3)], rtol=1e-12)
  np.testing.assert_allclose(result.gamma, [5 / np.sqrt(1.25), np.sqrt(5e-4 / (8 / 3))],
                             rtol=1e-12)
  np.testing.assert_array_equal(result.kept, [True, False])
  # A group already pruned keeps gamma and omega and stays pruned.
  again = group_prior.update_group_set(group_set, kernel, hessian, result.gamma,
                                       result.omega, np.array([True, False]), lam,
                                       THRESHOLD)
  assert again.gamma[1] == result.gamma[1] and not again.kept[1]


def test_penalty_is_the_reweighted_group_lasso():
  model = _small_cnn()
  chain = structure.CNNChain(model)
  sets = chain.group_sets(("filter", "channel"))
  prior = group_prior.WeightGroupPrior(sets)
  rng = np.random.default_rng(1)
  expected = 0.0
  kernels = {s.layer_index: chain.group_tensor(s.layer_index) for s in sets}
  for s in sets:
    omega = rng.uniform(0.5, 2.0, s.num_groups)
    kept = rng.random(s.num_groups) > 0.3
    prior.omega[s.name].assign(omega)
    prior.set_kept(s.name, kept)
    norms = np.linalg.norm(s.view(kernels[s.layer_index]).numpy(), axis=1)
    expected += 0.01 * np.sum(omega * kept * norms)
  np.testing.assert_allclose(float(prior.penalty(kernels, 0.01)), expected, rtol=1e-5)


def test_keep_at_least_one_unit_warns(caplog):
  with caplog.at_level(logging.WARNING, logger="absl"):
    kept = structure.keep_at_least_one("conv9", np.zeros(4, bool), np.array([0.1, 0.4, 0.2, 0.0]))
  np.testing.assert_array_equal(kept, [False, True, False, False])
  assert any("every unit of layer conv9" in r.getMessage() for r in caplog.records)


# --- the weight Hessian ---------------------------------------------------------
def _exact_kernel_hessian_diagonal(chain, images):
  """Independent oracle: Hessian-vector products through nested tapes, for
  every kernel and for the gamma and beta of each BN in `chain.bn_after`."""
  variables = [chain.kernel(w) for w in chain.weighted]
  for bn in chain.bn_after.values():
    variables += [chain.layers[bn].gamma, chain.layers[bn].beta]
  with tf.GradientTape(persistent=True) as outer:
    with tf.GradientTape() as inner:
      logits = chain.forward(images, training=False)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=tf.argmax(logits, -1), logits=logits))
    grads = inner.gradient(loss, variables)
    flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
  rows = outer.jacobian(flat, variables, experimental_use_pfor=False)
  diagonals, offset = [], 0
  for variable, row in zip(variables, rows):
    size = int(np.prod(variable.shape))
    block = tf.reshape(row[offset:offset + size], [size, size])
    diagonals.append(tf.reshape(tf.linalg.diag_part(block), variable.shape).numpy())
    offset += size
  result = dict(zip(chain.weighted, diagonals))
  for k, bn in enumerate(chain.bn_after.values()):
    start = len(chain.weighted) + 2 * k
    result[bn] = np.stack(diagonals[start:start + 2])
  return result


def test_ggn_equals_the_exact_hessian_diagonal():
  # The labels do not matter: the CE Hessian depends on p only.
  keras.utils.set_random_seed(3)
  model = _small_cnn((6, 6, 2), classes=4, dtype="float64")
  _randomize_batch_norms(model)
  chain = structure.CNNChain(model)
  images = tf.constant(np.random.default_rng(0).normal(size=(3, 6, 6, 2)))
  ggn = kernel_hessian_diagonal(chain, images, "ggn")
  exact = _exact_kernel_hessian_diagonal(chain, images)
  assert sorted(ggn) == sorted(exact) and len(chain.bn_after) == 1
  for w in exact:
    assert np.all(ggn[w].numpy() >= 0)
    np.testing.assert_allclose(ggn[w].numpy(), exact[w], rtol=1e-8, atol=1e-12)


def test_ggn_mc_is_unbiased():
  keras.utils.set_random_seed(4)
  model = _small_cnn((6, 6, 2), classes=3)
  chain = structure.CNNChain(model)
  images = tf.random.stateless_normal((4, 6, 6, 2), seed=[1, 2])
  ggn = kernel_hessian_diagonal(chain, images, "ggn")
  fn = tf.function(lambda s: kernel_hessian_diagonal(chain, images, "ggn_mc", s))
  samples = 400
  total = None
  for i in range(samples):
    h = fn(tf.constant([7, i], tf.int64))
    total = h if total is None else {w: total[w] + h[w] for w in h}
  for w in chain.weighted:
    mean = total[w].numpy() / samples
    scale = np.abs(ggn[w].numpy()).sum()
    assert np.abs(mean - ggn[w].numpy()).sum() / scale < 0.15


# --- slimming -------------------------------------------------------------------
def _random_masks(chain, rng, keep=0.5):
  masks = {}
  for p in chain.prunable:
    mask = (rng.random(chain.units(p)) < keep).astype(np.float32)
    mask[rng.integers(chain.units(p))] = 1.0
    masks[p] = mask
  return masks


@pytest.mark.parametrize("builder", [
    lambda: cnn_zoo.lenet5((28, 28, 1), 10),
    lambda: cnn_zoo.vgg_like((32, 32, 3), 10, 0.125),
    lambda: _small_cnn(softmax=True),
])
def test_slim_model_equals_masked_model(builder):
  model = builder()
  _randomize_batch_norms(model)
  chain = structure.CNNChain(model)
  rng = np.random.default_rng(5)
  masks = _random_masks(chain, rng)
  images = tf.random.stateless_normal((5,) + chain.input_shape, seed=[3, 4])
  slim = structure.slim_model(chain, masks)
  expected = chain.forward(images, unit_masks=masks).numpy()
  np.testing.assert_allclose(slim(images, training=False).numpy(), expected,
                             rtol=1e-5, atol=1e-5)
  for p in chain.prunable:
    assert slim.get_layer(chain.layers[p].name).get_config().get(
        "filters", slim.get_layer(chain.layers[p].name).get_config().get("units")) == masks[p].sum()
  params, macs = structure.count_params_and_macs(chain, masks)
  slim_params, slim_macs = structure.count_params_and_macs(structure.CNNChain(slim))
  assert (params, macs) == (slim_params, slim_macs)
  assert params == sum(int(np.prod(v.shape)) for v in slim.trainable_variables)
  assert params < sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_softmax_models_are_compressed_on_logits():
  model = _small_cnn(softmax=True)
  chain = structure.CNNChain(model)
  assert chain.strip_softmax
  images = tf.random.stateless_normal((3, 8, 8, 1), seed=[0, 1])
  np.testing.assert_allclose(tf.nn.softmax(chain.forward(images)).numpy(),
                             model(images).numpy(), rtol=1e-5, atol=1e-6)


def test_shape_pruned_entries_stay_zero_through_kernel_mask():
  model = _small_cnn()
  chain = structure.CNNChain(model)
  rng = np.random.default_rng(2)
  masks = {p: np.ones(chain.units(p), np.float32) for p in chain.prunable}
  c2 = chain.weighted[1]
  shape_mask = (rng.random(chain.kernel(c2).shape[:-1]) < 0.5).astype(np.float32)
  shape_mask = np.broadcast_to(shape_mask[..., None], chain.kernel(c2).shape).copy()
  slim = structure.slim_model(chain, masks, {c2: shape_mask})
  kernel = slim.get_layer("c2").kernel
  assert np.all(kernel.numpy()[shape_mask == 0] == 0)
  optimizer = keras.optimizers.SGD(0.1)
  optimizer.apply_gradients([(tf.ones_like(kernel), kernel)])
  assert np.all(kernel.numpy()[shape_mask == 0] == 0)
  assert np.all(kernel.numpy()[shape_mask == 1] != 0)
  params, _ = structure.count_params_and_macs(structure.CNNChain(slim))
  full, _ = structure.count_params_and_macs(chain)
  assert params == full - int((shape_mask == 0).sum())


def test_kernel_mask_config_round_trip(tmp_path):
  constraint = structure.KernelMask(np.array([[1.0, 0.0], [0.0, 1.0]]))
  restored = structure.KernelMask.from_config(constraint.get_config())
  np.testing.assert_array_equal(restored.mask, constraint.mask)
  deserialized = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(constraint))
  assert isinstance(deserialized, structure.KernelMask)
  with pytest.raises(ValueError, match="0/1"):
    structure.KernelMask([0.5])


def test_slim_model_keras_round_trip(tmp_path):
  model = _small_cnn()
  chain = structure.CNNChain(model)
  c1 = chain.weighted[0]
  shape_mask = np.ones(chain.kernel(c1).shape, np.float32)
  shape_mask[0, 0] = 0.0
  slim = structure.slim_model(chain, _random_masks(chain, np.random.default_rng(0)),
                              {c1: shape_mask})
  slim.save(tmp_path / "slim.keras")
  loaded = keras.saving.load_model(tmp_path / "slim.keras")
  images = tf.random.stateless_normal((2, 8, 8, 1), seed=[5, 6])
  np.testing.assert_allclose(loaded(images).numpy(), slim(images).numpy(), rtol=1e-6)
  assert isinstance(loaded.get_layer("c1").kernel_constraint, structure.KernelMask)


def test_bn_recalibration_is_the_mean_of_batch_statistics(tmp_path):
  import dataclasses
  from bayesnas_tf import config as config_lib
  from bayesnas_tf.data import arrays as data_lib
  from bayesnas_tf.compress import compressor
  keras.utils.set_random_seed(0)
  _small_cnn().save(tmp_path / "m.keras")
  config = config_lib.default_config("compress")
  config = dataclasses.replace(
      config,
      data=dataclasses.replace(config.data, dataset="digits", batch_size=32),
      compress=dataclasses.replace(config.compress, base_model=str(tmp_path / "m.keras")),
      runtime=dataclasses.replace(config.runtime, model_dir=str(tmp_path / "run")))
  data = data_lib.ArrayTrainingData(data_lib.load_dataset("digits"),
                                    data_lib.AugmentConfig(0, False, 0), 256, 64, 0)
  job = compressor.Compressor(config, data, tf.distribute.get_strategy())
  job.recalibrate_batch_norm(round_index=3)
  conv = job.model.get_layer("c1")
  means, variances = [], []
  for images, _ in data.train(batch_size=32, seed=0, epoch=2_000_003).take(8):
    out = conv(images).numpy().reshape(-1, 6)
    means.append(out.mean(0))
    variances.append(out.var(0))
  bn = job.model.get_layer("b1")
  assert job.steps_per_epoch == 8 and bn.momentum == pytest.approx(0.99)
  np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, 0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, 0), rtol=1e-4,
                             atol=1e-5)


# --- the command line ---------------------------------------------------------
DIGITS_FLAGS = ("--mode=compress", "--dataset=digits", "--batch_size=32",
                "--max_train_examples=640", "--iterations=2", "--epochs_per_iteration=1",
                "--finetune_epochs=1", "--learning_rate=0.05", "--lambda_group=0.01",
                "--hessian_batches=2", "--prune_threshold=0.05", "--noprogress")


@pytest.fixture(scope="module")
def compressed_digits(tmp_path_factory):
  """A user's trained model (--base_model) compressed on the embedded digits."""
  root = tmp_path_factory.mktemp("compress")
  keras.utils.set_random_seed(0)
  model = _small_cnn()
  model.compile(optimizer=keras.optimizers.Adam(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  from bayesnas_tf.data import arrays as data_lib
  digits = data_lib.load_dataset("digits")
  x = (digits.x_train.astype(np.float32) / 255.0 - digits.mean) / digits.std
  model.fit(x, digits.y_train, epochs=5, batch_size=64, verbose=0)
  model.save(root / "user_cnn.keras")
  result = run_main(*DIGITS_FLAGS, f"--base_model={root / 'user_cnn.keras'}",
                    f"--model_dir={root / 'run'}", f"--export_dir={root / 'exports'}")
  assert result.returncode == 0, result.stderr[-3000:]
  return root, result


def test_compress_writes_report_and_prints_table(compressed_digits):
  root, result = compressed_digits
  report = json.loads((root / "run" / "compression.json").read_text())
  for key in ("params_before", "params_after", "flops_before", "flops_after",
              "accuracy_before", "accuracy_pruned", "accuracy_finetuned"):
    assert key in report
    assert f"{key}: " in result.stdout
  assert report["params_before"] == 6 * 9 + 6 + 2 * 6 + 8 * 54 + 8 + (2 * 2 * 8) * 12 + 12 + 130
  assert report["params_after"] <= report["params_before"]
  assert 0.0 <= report["accuracy_pruned"] <= 1.0
  assert report["accuracy_before"] > 0.5  # the user's model was trained
  # The slim model is saved and has exactly the kept units of the report.
  slim = keras.saving.load_model(root / "run" / "slim_model.keras")
  for row in report["layers"]:
    layer = slim.get_layer(row["layer"])
    assert row["units_kept"] == layer.get_config().get("filters", layer.get_config().get("units"))
  assert report["slim_max_logit_difference"] < 1e-4
  assert sum(int(np.prod(v.shape)) for v in slim.trainable_variables) == report["params_after"]
  assert [r["round"] for r in report["rounds"]] == [1, 2]


def test_compress_writes_result_json(compressed_digits):
  root, _ = compressed_digits
  result = json.loads((root / "run" / "result.json").read_text())
  report = json.loads((root / "run" / "compression.json").read_text())
  assert result["mode"] == "compress" and result["wall_time_s"] > 0
  assert result["report"]["params_after"] == report["params_after"]
  assert result["report_path"].endswith("compression.json")
  assert result["export_path"].startswith(str(root / "exports"))
  assert "slim_model" not in result  # A Keras model has no JSON form.


def test_compressed_model_serves_without_bayesnas(compressed_digits, tmp_path):
  root, _ = compressed_digits
  version = root / "exports" / "user_cnn_compressed" / "1"
  assert version.is_dir()
  from bayesnas_tf.data import arrays as data_lib
  digits = data_lib.load_dataset("digits")
  served = serve_without_project(version, digits.x_test[:16], tmp_path)
  slim = keras.saving.load_model(root / "run" / "slim_model.keras")
  x = (digits.x_test[:16].astype(np.float32) / 255.0 - digits.mean) / digits.std
  expected = tf.nn.softmax(slim(x, training=False)).numpy()
  np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


def test_rerun_resumes_from_the_last_round(compressed_digits, tmp_path):
  root, _ = compressed_digits
  report = json.loads((root / "run" / "compression.json").read_text())
  result = run_main(*DIGITS_FLAGS, f"--base_model={root / 'user_cnn.keras'}",
                    f"--model_dir={root / 'run'}", "--export=false")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "after 2 round(s)" in result.stderr
  again = json.loads((root / "run" / "compression.json").read_text())
  assert again["params_after"] == report["params_after"]
  assert again["accuracy_pruned"] == report["accuracy_pruned"]
  assert again["rounds"] == report["rounds"]


def test_mirrored_strategy_runs_the_same_job(compressed_digits, tmp_path):
  """Two logical CPU replicas: steps, Hessian sums and evaluation all go
  through strategy.run; the base model's evaluation must match exactly."""
  root, _ = compressed_digits
  single = json.loads((root / "run" / "compression.json").read_text())
  result = run_main(*DIGITS_FLAGS, f"--base_model={root / 'user_cnn.keras'}",
                    "--strategy=mirrored", "--logical_cpu_devices=2",
                    f"--model_dir={tmp_path / 'run'}", "--export=false")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "compression.json").read_text())
  assert report["params_before"] == single["params_before"]
  assert report["accuracy_before"] == pytest.approx(single["accuracy_before"], abs=1e-6)
  assert len(report["rounds"]) == 2
  assert report["slim_max_logit_difference"] < 1e-4


def test_shape_groups_and_an_extreme_target_keep_every_layer_alive(compressed_digits, tmp_path):
  """A threshold above every gamma would prune everything: each layer keeps
  one unit and one shape group, says so, and the slim model still matches."""
  root, _ = compressed_digits
  flags = [f for f in DIGITS_FLAGS if not f.startswith(("--lambda_group", "--prune_threshold",
                                                        "--epochs_per_iteration"))]
  result = run_main(*flags, "--groups=filter,channel,shape", "--lambda_group=0.01",
                    "--prune_threshold=1000", "--epochs_per_iteration=1",
                    f"--base_model={root / 'user_cnn.keras'}",
                    f"--model_dir={tmp_path / 'run'}", "--export=false")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "compression.json").read_text())
  assert "pruning would remove every unit of layer" in result.stderr
  for row in report["layers"][:-1]:
    assert row["units_kept"] == 1 and row["weights_kept"] >= 1, row
  assert "c1 (shape groups)" in result.stderr
  assert report["slim_max_logit_difference"] < 1e-4
  slim = keras.saving.load_model(tmp_path / "run" / "slim_model.keras")
  constraints = [type(slim.get_layer(n).kernel_constraint).__name__ for n in ("c1", "c2")]
  assert constraints == ["KernelMask", "KernelMask"]


@pytest.mark.parametrize("extra, message", [
    (("--base_model=/no/such/model.keras",), "does not exist"),
    (("--base_model=BAD",), "unsupported layer(s) n1 (LayerNormalization)"),
    (("--lambda_group=0",), "--lambda_group"),
    (("--groups=filter,rows",), "--groups"),
    (("--dataset=npz:/no/such/file.npz",), "/no/such/file.npz"),
    (("--architecture=lenet5",), "8x8"),
])
def test_bad_input_is_one_line(tmp_path, extra, message):
  if "--base_model=BAD" in extra:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.LayerNormalization(name="n1")(x)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    keras.Model(inputs, outputs).save(tmp_path / "bad.keras")
    extra = (f"--base_model={tmp_path / 'bad.keras'}",)
  result = run_main(*DIGITS_FLAGS, *extra, f"--model_dir={tmp_path / 'run'}",
                    "--export=false")
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert message in result.stderr.strip().splitlines()[-1], result.stderr[-1500:]


def test_summary_only_lenet5():
  result = run_main("--mode=compress", "--dataset=mnist", "--summary_only")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines() == ["trainable_params: 431080", "flops: 2293000"]


@requires_shared_data(MNIST)
def test_lenet5_on_mnist_end_to_end(tmp_path):
  result = run_main(
      "--mode=compress", f"--dataset=npz:{MNIST}", "--max_train_examples=3200",
      "--max_eval_examples=1000", "--pretrain_epochs=2", "--iterations=1",
      "--epochs_per_iteration=1", "--finetune_epochs=1", "--noprogress",
      f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'exports'}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "compression.json").read_text())
  assert report["params_before"] == 431_080
  assert report["accuracy_before"] > 0.8
  assert report["params_after"] < report["params_before"]
  assert (tmp_path / "run" / "base_model.keras").exists()
  assert (tmp_path / "exports" / "lenet5_compressed" / "1" / "saved_model.pb").exists()
