"""TensorFlow's thread pools, chosen per mode.

A cell network runs many independent small ops side by side (a supernet: 7
ops on each of 14 edges per cell, each a chain of convs and BNs; a child
cell: 8 ops on 4 nodes), so on a CPU-only host it runs faster when whole ops
run in parallel, one thread each, than when each op splits across every
core and the cores synchronise after every op. Measured on 2 cores:
- paper supernet (8 cells, C = 36, batch 18), search step: TF's default
  pools 4.25 s/step; inter-op 2, intra-op 1: 3.88 s; inter-op 1, intra-op 2:
  5.40 s; inter-op 4, intra-op 1: 4.23 s;
- bayesnas_l0.01 child (bench/retrain_bench.py), train step: 8 cells C = 16
  batch 64: 544 -> 488 ms; 20 cells C = 36 batch 128: 6.85 -> 6.58 s.
Plain CNNs (compress) have no such breadth, and accelerators schedule
differently: both keep TF's defaults.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from absl import logging
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.nn.devices import has_accelerator

# Modes whose networks are built from cells.
_CELL_NETWORK_MODES = ("search", "study", "retrain", "transfer")


def thread_counts(config: ExperimentConfig, accelerator: bool,
                  cpus: Optional[int]) -> Tuple[int, int]:
  """(inter_op, intra_op) for `config`; 0 means TensorFlow's default."""
  runtime = config.runtime
  wide = config.mode in _CELL_NETWORK_MODES and not accelerator
  inter = runtime.inter_op_threads
  intra = runtime.intra_op_threads
  if inter is None:
    inter = max(1, cpus or 1) if wide else 0
  if intra is None:
    intra = 1 if wide else 0
  return inter, intra


def configure_threads(config: ExperimentConfig) -> Tuple[int, int]:
  """Sets the pools before TensorFlow starts; returns what was asked for.

  Once TensorFlow has started (a second run in the same process), the pools
  cannot change: an explicit flag that differs is an error, a per-mode
  choice is left as it is.
  """
  inter, intra = thread_counts(config, has_accelerator(), os.cpu_count())
  runtime = config.runtime
  for name, value, explicit, setter, getter in (
      ("inter_op_threads", inter, runtime.inter_op_threads is not None,
       tf.config.threading.set_inter_op_parallelism_threads,
       tf.config.threading.get_inter_op_parallelism_threads),
      ("intra_op_threads", intra, runtime.intra_op_threads is not None,
       tf.config.threading.set_intra_op_parallelism_threads,
       tf.config.threading.get_intra_op_parallelism_threads)):
    try:
      setter(value)
    except RuntimeError:
      if explicit and getter() != value:
        raise ConfigError(
            f"--{name}={value} cannot take effect: TensorFlow already started "
            f"in this process with {name}={getter()}") from None
      logging.debug("%s stays %d (TensorFlow already started)", name, getter())
  actual = (tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads())
  logging.info("TensorFlow threads: inter-op %s, intra-op %s%s",
               actual[0] or "default", actual[1] or "default",
               "" if actual == (inter, intra) else
               " (set when TensorFlow started in this process)")
  return inter, intra
