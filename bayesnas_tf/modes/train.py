"""--mode=retrain / transfer: train the network of a genotype, then export it.

The network comes from the genotype's search-space family
(`SearchSpaceFamily.build_child_network`); the loop is training/train.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict

from absl import logging
import keras
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.data import streaming as streaming_data
from bayesnas_tf.errors import CheckpointMismatchError, ConfigError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.modes.common import DATASET_FILE
from bayesnas_tf.modes.common import GENOTYPE_FILE
from bayesnas_tf.modes.common import prepare_runtime
from bayesnas_tf.nn.init import count_params
from bayesnas_tf.runtime import checkpointing
from bayesnas_tf.runtime import precision
from bayesnas_tf.runtime import run_dir
from bayesnas_tf.runtime.checkpointing import variables_by_path
from bayesnas_tf.spaces import registry
from bayesnas_tf.training import export as export_lib


def build_child_network(config: ExperimentConfig, genotype, num_classes: int,
                        image_shape) -> keras.Model:
  """The built network of `genotype`, by its family (spaces/base.py)."""
  # Every layer computes in --dtype_policy; the variables stay float32.
  with precision.policy_scope(config.runtime.dtype_policy):
    return registry.family_of(genotype).build_child_network(
        config.train, genotype, num_classes, image_shape)


def _image_shape_for_summary(config: ExperimentConfig):
  image_shape, num_classes = data_lib.dataset_metadata(config.data.dataset)
  if config.train.image_size:
    image_shape = (config.train.image_size, config.train.image_size, image_shape[-1])
  return image_shape, num_classes


def train_summary(config: ExperimentConfig) -> Dict[str, int]:
  genotype = registry.resolve_genotype(config.train.genotype)
  image_shape, num_classes = _image_shape_for_summary(config)
  model = build_child_network(config, genotype, num_classes, image_shape)
  return {"trainable_params": count_params(model.trainable_variables)}


def load_training_data(config: ExperimentConfig):
  """ImageNet-size data streams from disk; everything else is in memory."""
  data = config.data
  if config.train.variant == "imagenet":
    return streaming_data.load_streaming_dataset(
        data.dataset, data.data_dir, data.download, config.train.image_size or 224)
  dataset = data_lib.load_dataset(data.dataset, data.data_dir, data.download)
  if config.train.image_size and config.train.image_size != dataset.image_shape[0]:
    raise ConfigError(
        f"--image_size={config.train.image_size} differs from the "
        f"{dataset.image_shape[0]}x{dataset.image_shape[1]} images of "
        f"{data.dataset}; --mode=retrain trains at the dataset's own size "
        "(pass --image_size=0)")
  augment = data_lib.AugmentConfig(data.crop_padding, data.flip, data.cutout)
  return data_lib.ArrayTrainingData(
      dataset, augment, data.max_train_examples, data.max_eval_examples,
      config.runtime.seed)


def _check_genotype_matches(model_dir: str, genotype) -> None:
  path = os.path.join(model_dir, GENOTYPE_FILE)
  if os.path.exists(path) and registry.load_genotype(path) != genotype:
    raise CheckpointMismatchError(
        f"{model_dir} holds a run of another genotype ({path}); pass a new "
        "--model_dir")


def warm_start_cells(model: keras.Model, source_dir: str) -> int:
  """Copies cell weights of matching path and shape from a retrain run.

  Transfer from CIFAR to ImageNet (DESIGN.md 7): the cells' ops keep their
  shapes when C matches; stems, preprocessors of other sizes and the head
  stay freshly initialised. Returns how many variables were copied.
  """
  # The newest checkpoint that reads back intact (checkpointing.py).
  latest = checkpointing.newest_readable(os.path.join(source_dir, "checkpoints"))
  if not latest:
    raise ConfigError(f"--warm_start={source_dir} holds no checkpoint; pass the "
                      "--model_dir of a --mode=retrain run")
  reader = tf.train.load_checkpoint(latest)
  shapes = reader.get_variable_to_shape_map()
  copied = 0
  for path, variable in variables_by_path(model).items():
    key = "model/" + path.replace("/", ".S") + "/.ATTRIBUTES/VARIABLE_VALUE"
    if path.startswith("cell_") and key in shapes and (
        tuple(shapes[key]) == tuple(variable.shape)):
      variable.assign(reader.get_tensor(key))
      copied += 1
  logging.info("warm start: %d cell variables copied from %s", copied, source_dir)
  return copied


def default_model_name(config: ExperimentConfig) -> str:
  if config.export.model_name:
    return config.export.model_name
  # A built-in genotype names its folder; another takes its family's name.
  for family in registry.families():
    name = family.default_model_name(config.train.genotype)
    if name:
      return name
  return registry.family_of(
      registry.resolve_genotype(config.train.genotype)).export_name


def run_training(config: ExperimentConfig, flags_text: str = ""):
  """--mode=retrain / transfer: train a derived network, then export it."""
  from bayesnas_tf.training import train as train_lib  # pylint: disable=g-import-not-at-top
  run_dir.check_model_dir(config)
  genotype = registry.resolve_genotype(config.train.genotype)
  _check_genotype_matches(config.runtime.model_dir, genotype)
  if config.export.export:
    export_lib.check_writable(config.export.export_dir)
  strategy = prepare_runtime(config)
  data = load_training_data(config)
  with strategy.scope():
    model = build_child_network(config, genotype, data.num_classes, data.image_shape)
  logging.info("%s network: %s trainable parameters", config.train.variant,
               f"{count_params(model.trainable_variables):,}")
  trainer = train_lib.Trainer(config, model, data, strategy)
  run_dir.write_run_files(config, flags_text)
  model_dir = config.runtime.model_dir
  genotype.save(os.path.join(model_dir, GENOTYPE_FILE))
  atomic_write_text(os.path.join(model_dir, DATASET_FILE), json.dumps({
      "name": data.name, "class_names": list(data.class_names),
      "image_shape": list(data.image_shape),
      "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
  }, indent=2))
  if config.train.warm_start and not checkpointing.candidates(
      trainer.manager.directory):
    warm_start_cells(model, config.train.warm_start)
  result = trainer.run()
  if config.export.export:
    result = dataclasses.replace(
        result, export_path=export_model(model, config, genotype))
  return result


def export_model(model, config: ExperimentConfig, genotype) -> str:
  with open(os.path.join(config.runtime.model_dir, DATASET_FILE)) as f:
    meta = json.load(f)
  return export_lib.export_saved_model(
      model, export_dir=config.export.export_dir,
      model_name=default_model_name(config), image_shape=meta["image_shape"],
      mean=meta["mean"], std=meta["std"], class_names=meta["class_names"],
      genotype_json=genotype.to_json())
