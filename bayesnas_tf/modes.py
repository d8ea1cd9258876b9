"""One function per `--mode`, dispatched from a table (STYLE.md 15).

Each takes the frozen `ExperimentConfig` and returns what it produced. Data
flows one way: search -> genotype.json -> retrain/transfer -> checkpoint ->
SavedModel; each mode reads what an earlier one wrote and never re-derives it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Callable, Dict, Optional

from absl import logging
import keras
import tensorflow as tf

from bayesnas_tf import export as export_lib
from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.data import streaming as streaming_data
from bayesnas_tf.errors import CheckpointMismatchError, ConfigError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.nn.init import count_params
from bayesnas_tf.runtime import cluster
from bayesnas_tf.runtime import distribute
from bayesnas_tf.runtime import precision
from bayesnas_tf.runtime import preemption
from bayesnas_tf.runtime import results
from bayesnas_tf.runtime import run_dir
from bayesnas_tf.runtime import threads
from bayesnas_tf.runtime.checkpointing import restore_latest
from bayesnas_tf.runtime.checkpointing import variables_by_path
from bayesnas_tf.spaces import registry

DATASET_FILE = "dataset.json"
GENOTYPE_FILE = "genotype.json"


def prepare_runtime(config: ExperimentConfig) -> tf.distribute.Strategy:
  """Devices, seeds, determinism and the distribution strategy."""
  runtime = config.runtime
  precision.check_supported(runtime.dtype_policy)
  threads.configure_threads(config)
  distribute.configure_logical_cpus(runtime.logical_cpu_devices)
  keras.utils.set_random_seed(runtime.seed)
  if runtime.deterministic:
    tf.config.experimental.enable_op_determinism()
  configure_graph_optimizer()
  if runtime.jit_compile and not threads.has_accelerator():
    logging.warning(JIT_ON_CPU_WARNING)
  return distribute.make_strategy(runtime.strategy, runtime)


# Measured on 2 cores (README "Scaling out"): XLA's CPU code for depthwise
# convolutions is about 30x slower than TensorFlow's kernel (5x5, C = 36,
# 32x32, batch 18, forward + backward: 126 against 3.9 ms) and for max-pool
# gradients about 10x (29 against 2.7 ms); dense convolutions are on par.
JIT_ON_CPU_WARNING = (
    "--jit_compile on a host without GPU or TPU: XLA's CPU code for depthwise "
    "convolutions and max-pool gradients is 10-30x slower than TensorFlow's "
    "kernels (a search step of the paper supernet: 47 s against 3.8 s); "
    "XLA is meant for GPUs and TPUs, leave it off here")


def configure_graph_optimizer() -> bool:
  """Turns Grappler off on a host without GPU or TPU; returns whether it did.

  Grappler's rewrites (layout, remapping) pay off on accelerators; on a CPU
  they cost more than they save for the supernet's large graphs (measured,
  5-cell supernet: first call 16 s -> 5 s, step 0.20 -> 0.14 s; 3-cell C = 4
  supernet: first call of the search step 4.2 -> 2.3 s, no slower a step).
  """
  if threads.has_accelerator():
    return False
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
  return True


# --- search ------------------------------------------------------------------
def search_summary(config: ExperimentConfig) -> Dict[str, int]:
  """Builds the supernet without data and counts its parameters."""
  image_shape, num_classes = data_lib.dataset_metadata(config.data.dataset)
  backend = registry.get_family(config.supernet.search_space).search_backend(
      config)
  return backend.summary(backend.build_network(num_classes, image_shape))


def run_search(config: ExperimentConfig, flags_text: str = ""):
  """--mode=search: the whole BayesNAS search; returns a `SearchResult`."""
  from bayesnas_tf.search import search_loop  # pylint: disable=g-import-not-at-top
  run_dir.check_model_dir(config)
  strategy = prepare_runtime(config)
  dataset = data_lib.load_dataset(config.data.dataset, config.data.data_dir,
                                  config.data.download)
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  run_dir.write_run_files(config, flags_text)
  return search.run()


# --- retrain / transfer --------------------------------------------------------
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
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(), os.path.join(source_dir, "checkpoints"), 1)
  if not manager.latest_checkpoint:
    raise ConfigError(f"--warm_start={source_dir} holds no checkpoint; pass the "
                      "--model_dir of a --mode=retrain run")
  reader = tf.train.load_checkpoint(manager.latest_checkpoint)
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
  # A built-in genotype names its folder.
  for family in registry.families():
    name = family.default_model_name(config.train.genotype)
    if name:
      return name
  return "bayesnas"


def run_training(config: ExperimentConfig, flags_text: str = ""):
  """--mode=retrain / transfer: train a derived network, then export it."""
  from bayesnas_tf import train as train_lib  # pylint: disable=g-import-not-at-top
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
  if config.train.warm_start and trainer.manager.latest_checkpoint is None:
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


def run_export(config: ExperimentConfig, flags_text: str = "") -> str:
  """--mode=export: the trained model of --model_dir as the next version."""
  del flags_text
  model_dir = config.runtime.model_dir
  trained = run_dir.read_config(model_dir)
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
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(model_dir, "checkpoints"), 1)
  if restore_latest(checkpoint, manager, partial=True) is None:
    raise CheckpointMismatchError(
        f"{model_dir} holds no checkpoint to export; train it first")
  # The export flags of this invocation; the trained run's for the rest.
  trained = dataclasses.replace(trained, export=config.export,
                                runtime=config.runtime)
  return export_model(model, trained, genotype)


# --- compress ----------------------------------------------------------------
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


def _run_study(config: ExperimentConfig, flags_text: str = ""):
  """--mode=study: searched vs random cells (bayesnas_tf/study.py)."""
  from bayesnas_tf import study  # pylint: disable=g-import-not-at-top
  return study.run_study(config, flags_text)


def result_text(config: ExperimentConfig, result) -> Optional[str]:
  """What `main.py` prints after a mode finishes (None: nothing)."""
  if config.mode == "compress":
    from bayesnas_tf.compress import compressor  # pylint: disable=g-import-not-at-top
    return compressor.format_report(result.report)
  if config.mode == "study":
    from bayesnas_tf import study  # pylint: disable=g-import-not-at-top
    return study.result_text(result)
  return None


MODES: Dict[str, Callable] = {
    "search": run_search, "retrain": run_training, "transfer": run_training,
    "compress": run_compress, "export": run_export,
    "study": _run_study,
}
SUMMARIES: Dict[str, Callable] = {
    "search": search_summary, "retrain": train_summary, "transfer": train_summary,
    "compress": compress_summary,
}


def run(config: ExperimentConfig, flags_text: str = ""):
  try:
    mode_fn = MODES[config.mode]
  except KeyError:
    raise ConfigError(
        f"unknown --mode={config.mode}; valid modes are {', '.join(MODES)}") from None
  logging.info("mode %s, model_dir %s", config.mode, config.runtime.model_dir)
  start = time.monotonic()
  # SIGTERM checkpoints and stops the run (preemption.py); a worker other
  # than the chief writes into a scratch folder of its own (cluster.py).
  with preemption.sigterm_handler(), cluster.worker_outputs(config) as config:
    result = mode_fn(config, flags_text)
    # The final figures for scripts (results.py), after the mode succeeded.
    path = results.write_result(config, result, time.monotonic() - start)
  logging.info("%s finished in %.0f s; figures in %s", config.mode,
               time.monotonic() - start, path)
  return result


def summary(config: ExperimentConfig) -> Dict[str, int]:
  if config.mode not in SUMMARIES:
    raise ConfigError(f"--summary_only is not available for --mode={config.mode}")
  return SUMMARIES[config.mode](config)
