"""--mode=compress: Bayesian structured pruning of a CNN (compress/)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.modes.common import prepare_runtime
from bayesnas_tf.runtime import run_dir
from bayesnas_tf.training import export as export_lib


def _compress_base_model(config: ExperimentConfig, image_shape, num_classes):
  from bayesnas_tf.compress import compressor  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.compress import cnn_zoo  # pylint: disable=g-import-not-at-top
  cfg = config.compress
  if cfg.base_model:
    return compressor.load_base_model(cfg.base_model, image_shape, num_classes)
  return cnn_zoo.build_architecture(cfg.architecture, image_shape, num_classes,
                                    cfg.vgg_width)


def compress_summary(config: ExperimentConfig) -> Dict[str, int]:
  """Parameters and multiply-accumulates of the model to be compressed."""
  from bayesnas_tf.compress import structure  # pylint: disable=g-import-not-at-top
  image_shape, num_classes = data_lib.dataset_metadata(config.data.dataset)
  chain = structure.CNNChain(_compress_base_model(config, image_shape, num_classes))
  params, macs = structure.count_params_and_macs(chain)
  return {"trainable_params": params, "flops": macs}


def compressed_model_name(config: ExperimentConfig) -> str:
  if config.export.model_name:
    return config.export.model_name
  cfg = config.compress
  if cfg.base_model:
    stem = os.path.splitext(os.path.basename(cfg.base_model))[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + "_compressed"
  return f"{cfg.architecture}_compressed"


def run_compress(config: ExperimentConfig, flags_text: str = ""):
  """--mode=compress: Bayesian structured pruning, slimming, fine-tuning,
  report and export; returns a `CompressResult`."""
  from bayesnas_tf.compress import compressor  # pylint: disable=g-import-not-at-top
  run_dir.check_model_dir(config)
  if config.export.export:
    export_lib.check_writable(config.export.export_dir)
  strategy = prepare_runtime(config)
  data_cfg = config.data
  dataset = data_lib.load_dataset(data_cfg.dataset, data_cfg.data_dir, data_cfg.download)
  data = data_lib.ArrayTrainingData(
      dataset, data_lib.AugmentConfig(data_cfg.crop_padding, data_cfg.flip, data_cfg.cutout),
      data_cfg.max_train_examples, data_cfg.max_eval_examples, config.runtime.seed)
  job = compressor.Compressor(config, data, strategy)
  run_dir.write_run_files(config, flags_text)
  result = job.run()
  if config.export.export:
    result = dataclasses.replace(result, export_path=export_lib.export_saved_model(
        result.slim_model, export_dir=config.export.export_dir,
        model_name=compressed_model_name(config), image_shape=data.image_shape,
        mean=data.mean, std=data.std, class_names=data.class_names))
  return result


def result_text(result) -> str:
  """The compression report that the command line prints."""
  from bayesnas_tf.compress import compressor  # pylint: disable=g-import-not-at-top
  return compressor.format_report(result.report)
