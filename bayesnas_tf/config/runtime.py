"""`RuntimeConfig`: where and how a run executes."""

from __future__ import annotations

import dataclasses
from typing import Optional

from bayesnas_tf.config.checks import check_choice
from bayesnas_tf.config.checks import check_positive
from bayesnas_tf.errors import ConfigError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
# Keras dtype policies (runtime/precision.py).
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """Where and how a run executes.

  Attributes:
    model_dir: outputs and checkpoints.
    strategy: tf.distribute strategy name.
    logical_cpu_devices: split the CPU into N logical devices (0 = off),
      e.g. to run `mirrored` on one machine without GPUs.
    seed: seeds weights, data order, augmentation and the prior init.
    deterministic: TF op determinism (`enable_op_determinism`).
    jit_compile: XLA-compile the step functions.
    dtype_policy: Keras dtype policy of the networks: "float32",
      "mixed_bfloat16" or "mixed_float16" (GPU only; loss scaled).
      Variables, the Hessian, the prior and the penalty stay float32/64
      (precision.py).
    recompute_cells: recompute each supernet cell's activations in the
      backward pass of a training step instead of keeping them (less
      memory, same numbers; recompute.py).
    checkpoint_every: steps between checkpoints (phase ends always save).
    keep_checkpoints: how many checkpoints to keep.
    progress: show progress bars (only when stdout is a terminal).
    log_every: steps between plain progress log lines when no bar is shown
      (0: one line at the end of each phase only).
    tpu: --strategy=tpu: a TPU name or grpc:// address ("": this TPU VM).
    worker_hosts, task_index: --strategy=multi_worker_mirrored without
      TF_CONFIG: "host1:port1,host2:port2" and this worker's index in it.
    inter_op_threads, intra_op_threads: TensorFlow's thread pools (0: TF's
      default; None: chosen per mode, threads.py).
  """
  model_dir: str = "runs/search"
  strategy: str = "default"
  logical_cpu_devices: int = 0
  seed: int = 0
  deterministic: bool = False
  jit_compile: bool = False
  dtype_policy: str = "float32"
  recompute_cells: bool = False
  checkpoint_every: int = 100
  keep_checkpoints: int = 2
  progress: bool = True
  log_every: int = 50
  tpu: str = ""
  worker_hosts: str = ""
  task_index: int = 0
  inter_op_threads: Optional[int] = None
  intra_op_threads: Optional[int] = None

  def validate(self) -> None:
    if not self.model_dir:
      raise ConfigError("--model_dir must not be empty")
    check_choice("strategy", self.strategy, STRATEGIES)
    check_choice("dtype_policy", self.dtype_policy, DTYPE_POLICIES)
    check_positive("logical_cpu_devices", self.logical_cpu_devices, allow_zero=True)
    check_positive("seed", self.seed, allow_zero=True)
    check_positive("checkpoint_every", self.checkpoint_every)
    check_positive("keep_checkpoints", self.keep_checkpoints)
    check_positive("log_every", self.log_every, allow_zero=True)
    check_positive("task_index", self.task_index, allow_zero=True)
    for name in ("inter_op_threads", "intra_op_threads"):
      if getattr(self, name) is not None:
        check_positive(name, getattr(self, name), allow_zero=True)
    if self.tpu and self.strategy != "tpu":
      raise ConfigError(f"--tpu={self.tpu} needs --strategy=tpu")
    if (self.worker_hosts or self.task_index) and (
        self.strategy != "multi_worker_mirrored"):
      raise ConfigError("--worker_hosts/--task_index need "
                        "--strategy=multi_worker_mirrored")
