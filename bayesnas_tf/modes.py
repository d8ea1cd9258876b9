"""One function per `--mode`, dispatched from a table (STYLE.md 15).

Each takes the frozen `ExperimentConfig` and returns what it produced.
"""

from __future__ import annotations

import os
from typing import Callable, Dict

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf import data as data_lib
from bayesnas_tf import distribute
from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.models.supernet import SuperNet


def prepare_runtime(config: ExperimentConfig) -> tf.distribute.Strategy:
  """Devices, seeds, determinism and the distribution strategy."""
  runtime = config.runtime
  distribute.configure_logical_cpus(runtime.logical_cpu_devices)
  keras.utils.set_random_seed(runtime.seed)
  if runtime.deterministic:
    tf.config.experimental.enable_op_determinism()
  if not (tf.config.list_physical_devices("GPU") or
          tf.config.list_physical_devices("TPU")):
    # Grappler's rewrites (layout, remapping) pay off on accelerators; on a
    # CPU they cost more than they save for the supernet's large graphs
    # (measured, 5-cell supernet: first call 16 s -> 5 s, step 0.20 -> 0.14 s).
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
  return distribute.make_strategy(runtime.strategy)


def count_params(variables) -> int:
  return int(sum(int(np.prod(v.shape)) for v in variables))


def search_summary(config: ExperimentConfig) -> Dict[str, int]:
  """Builds the supernet without data and counts its parameters."""
  image_shape, num_classes = data_lib.dataset_metadata(config.data.dataset)
  net_cfg = config.supernet
  net = SuperNet(num_classes, net_cfg.cells, net_cfg.channels,
                 net_cfg.search_space, net_cfg.primitives,
                 net_cfg.stem_multiplier)
  net.build((None,) + tuple(image_shape))
  return {"trainable_params": count_params(net.trainable_variables),
          "gates": net.num_gates}


def write_run_files(config: ExperimentConfig, flags_text: str) -> None:
  """config.json (once) and flags.txt (each start) in the model directory."""
  model_dir = config.runtime.model_dir
  os.makedirs(model_dir, exist_ok=True)
  config_path = os.path.join(model_dir, "config.json")
  if not os.path.exists(config_path):
    atomic_write_text(config_path, config.to_json())
  if flags_text:
    atomic_write_text(os.path.join(model_dir, "flags.txt"), flags_text)


def run_search(config: ExperimentConfig, flags_text: str = ""):
  """--mode=search: the whole BayesNAS search; returns a `SearchResult`."""
  from bayesnas_tf.search import search_loop  # pylint: disable=g-import-not-at-top
  search_loop.check_model_dir(config)
  strategy = prepare_runtime(config)
  dataset = data_lib.load_dataset(config.data.dataset, config.data.data_dir,
                                  config.data.download)
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  write_run_files(config, flags_text)
  return search.run()


MODES: Dict[str, Callable] = {"search": run_search}
SUMMARIES: Dict[str, Callable] = {"search": search_summary}


def run(config: ExperimentConfig, flags_text: str = ""):
  try:
    mode_fn = MODES[config.mode]
  except KeyError:
    raise ConfigError(
        f"unknown --mode={config.mode}; valid modes are {', '.join(MODES)}") from None
  logging.info("mode %s, model_dir %s", config.mode, config.runtime.model_dir)
  return mode_fn(config, flags_text)


def summary(config: ExperimentConfig) -> Dict[str, int]:
  return SUMMARIES[config.mode](config)
