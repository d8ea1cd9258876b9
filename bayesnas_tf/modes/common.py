"""What every mode does before its work: devices, seeds, threads, the graph
optimizer and the distribution strategy."""

from __future__ import annotations

from absl import logging
import keras
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.nn import devices
from bayesnas_tf.runtime import distribute
from bayesnas_tf.runtime import precision
from bayesnas_tf.runtime import threads

# The files a retrain or transfer run writes beside its checkpoints, which
# --mode=export reads.
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
  if runtime.jit_compile and not devices.has_accelerator():
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
  if devices.has_accelerator():
    return False
  tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
  return True
