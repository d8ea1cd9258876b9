"""--mode=export: the trained model of a retrain/transfer run as the next
SavedModel version."""

from __future__ import annotations

import dataclasses
import json
import os

from absl import logging
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import CheckpointMismatchError, ConfigError
from bayesnas_tf.modes.common import DATASET_FILE
from bayesnas_tf.modes.common import GENOTYPE_FILE
from bayesnas_tf.modes.train import build_child_network
from bayesnas_tf.modes.train import export_model
from bayesnas_tf.runtime import run_dir
from bayesnas_tf.runtime import run_lock
from bayesnas_tf.runtime.checkpointing import restore_newest
from bayesnas_tf.runtime.checkpointing import variables_by_path
from bayesnas_tf.spaces import registry
from bayesnas_tf.training import export as export_lib


def run_export(config: ExperimentConfig, flags_text: str = "") -> str:
  """--mode=export: the trained model of --model_dir as the next version."""
  del flags_text
  model_dir = config.runtime.model_dir
  trained = run_dir.read_config(model_dir)
  # An export reads and takes no lock; a run still training there is
  # exported as of its newest checkpoint.
  holder = run_lock.live_holder(model_dir)
  if holder is not None:
    logging.warning("%s is still being trained (%s); exporting its newest "
                    "checkpoint", model_dir, holder.describe())
  if trained.mode not in ("retrain", "transfer"):
    raise ConfigError(
        f"{model_dir} holds a --mode={trained.mode} run; --mode=export exports "
        "the --model_dir of a retrain or transfer run")
  genotype = registry.load_genotype(os.path.join(model_dir, GENOTYPE_FILE))
  with open(os.path.join(model_dir, DATASET_FILE)) as f:
    meta = json.load(f)
  export_lib.check_writable(config.export.export_dir)
  model = build_child_network(trained, genotype, len(meta["class_names"]),
                              meta["image_shape"])
  checkpoint = tf.train.Checkpoint(model=variables_by_path(model))
  if restore_newest(checkpoint, os.path.join(model_dir, "checkpoints"),
                    partial=True) is None:
    raise CheckpointMismatchError(
        f"{model_dir} holds no checkpoint to export; train it first")
  # The export flags of this invocation; the trained run's for the rest.
  trained = dataclasses.replace(trained, export=config.export,
                                runtime=config.runtime)
  return export_model(model, trained, genotype)
