"""Runs beyond one process: the multi-worker cluster, its chief, where each
worker writes, and Cloud TPUs (DESIGN.md 9).

Multi-worker (`--strategy=multi_worker_mirrored`) follows TensorFlow's
multi-worker guide. The cluster comes from `TF_CONFIG`; when it is absent,
`--worker_hosts=h1:p1,h2:p2 --task_index=N` build it (as in Model Garden).
Every worker runs the same command and the same computation
(MultiWorkerMirroredStrategy all-reduces gradients, batch-norm sums, Hessian
sums and metrics), but only the chief writes outputs. Every other worker runs
with its --model_dir and --export_dir redirected to a scratch folder of its
own, `<model_dir>/worker_tmp_<type>_<index>`, which it empties when it starts
and removes when it stops: it writes the same checkpoints, summaries and
exports as the chief (the guide's pattern: saving may need every worker)
without touching the chief's files, and it restores from the chief's
checkpoints. So --model_dir must be on a file system every worker reads
(NFS, or one host); a restore checks that all workers found the same
checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Iterator, Optional, Tuple

from absl import logging
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig, RuntimeConfig
from bayesnas_tf.errors import ClusterError
from bayesnas_tf.runtime import preemption

WORKER_JOBS = ("chief", "worker")
SCRATCH_PREFIX = "worker_tmp_"
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')
# The modes whose --model_dir receives outputs; --mode=export only reads it.
_WRITING_MODES = ("search", "retrain", "transfer", "compress")


@dataclasses.dataclass(frozen=True)
class Task:
  """This process's place in the cluster.

  Attributes:
    task_type: "chief" or "worker".
    index: the index within its job.
    workers: the addresses of all workers, the chief first.
    has_chief_job: whether the cluster names a "chief" job (else worker 0
      is the chief).
  """
  task_type: str = "worker"
  index: int = 0
  workers: Tuple[str, ...] = ()
  has_chief_job: bool = False

  @property
  def num_workers(self) -> int:
    return max(len(self.workers), 1)

  @property
  def is_chief(self) -> bool:
    if self.task_type == "chief":
      return True
    return self.task_type == "worker" and self.index == 0 and not self.has_chief_job

  @property
  def name(self) -> str:
    return f"{self.task_type}_{self.index}"


@dataclasses.dataclass
class _Role:
  task: Task
  model_dir: str           # the chief's --model_dir
  scratch: Optional[str]   # this worker's redirected --model_dir (non-chief)


# The role of this process while a mode runs (worker_outputs), and the
# multi-worker strategy it created: a process is one task of one cluster.
_ROLE: Optional[_Role] = None
_STRATEGY: Optional[tf.distribute.Strategy] = None


# --- the cluster ---------------------------------------------------------------
def _check_address(address, where: str) -> None:
  host, colon, port = str(address).rpartition(":")
  if not isinstance(address, str) or not colon or not host or not port.isdigit() or (
      not 0 < int(port) < 65536):
    raise ClusterError(f"{where}: {address!r} is not HOST:PORT (e.g. "
                       "10.0.0.2:12345)")


def parse_tf_config(text: str) -> Task:
  """The task described by a TF_CONFIG value; a malformed one is a ClusterError."""
  try:
    spec = json.loads(text)
  except ValueError as error:
    raise ClusterError(f"TF_CONFIG is not valid JSON ({error}); set it like "
                       f"{TF_CONFIG_EXAMPLE}") from None
  if not (isinstance(spec, dict) and isinstance(spec.get("cluster"), dict)
          and isinstance(spec.get("task"), dict)):
    raise ClusterError("TF_CONFIG needs a 'cluster' and a 'task' object, e.g. "
                       f"{TF_CONFIG_EXAMPLE}")
  cluster, task = spec["cluster"], spec["task"]
  others = sorted(set(cluster) - set(WORKER_JOBS))
  if others:
    raise ClusterError(
        f"TF_CONFIG lists the job(s) {', '.join(others)}; "
        "--strategy=multi_worker_mirrored runs 'chief' and 'worker' tasks only")
  if not cluster:
    raise ClusterError(f"TF_CONFIG's cluster lists no worker, e.g. {TF_CONFIG_EXAMPLE}")
  for job, addresses in cluster.items():
    if not isinstance(addresses, list) or not addresses:
      raise ClusterError(f"TF_CONFIG cluster.{job} must be a non-empty list of "
                         "HOST:PORT strings")
    for address in addresses:
      _check_address(address, f"TF_CONFIG cluster.{job}")
  if len(cluster.get("chief", [])) > 1:
    raise ClusterError("TF_CONFIG lists more than one chief; name one chief "
                       "and the rest workers")
  task_type, index = task.get("type"), task.get("index", 0)
  if task_type not in cluster:
    raise ClusterError(
        f"TF_CONFIG task.type {task_type!r} is not a job of its cluster "
        f"({', '.join(sorted(cluster))})")
  if not isinstance(index, int) or isinstance(index, bool) or not (
      0 <= index < len(cluster[task_type])):
    raise ClusterError(
        f"TF_CONFIG task.index {index!r} is not in 0..{len(cluster[task_type]) - 1} "
        f"(the {task_type} list)")
  workers = tuple(cluster.get("chief", [])) + tuple(cluster.get("worker", []))
  return Task(task_type, index, workers, "chief" in cluster)


def tf_config_from_hosts(worker_hosts: str, task_index: int) -> str:
  """The TF_CONFIG of --worker_hosts/--task_index (worker 0 is the chief)."""
  hosts = [h.strip() for h in worker_hosts.split(",") if h.strip()]
  for host in hosts:
    _check_address(host, "--worker_hosts")
  if not 0 <= task_index < len(hosts):
    raise ClusterError(f"--task_index={task_index} is not in 0..{len(hosts) - 1} "
                       f"(one index per --worker_hosts entry)")
  return json.dumps({"cluster": {"worker": hosts},
                     "task": {"type": "worker", "index": task_index}})


def resolve_task(runtime: RuntimeConfig) -> Optional[Task]:
  """This process's task under --strategy=multi_worker_mirrored, else None.

  TF_CONFIG describes the cluster; --worker_hosts/--task_index write it when
  it is absent. Neither: a cluster of one worker (the local devices).
  """
  if runtime.strategy != "multi_worker_mirrored":
    return None
  text = os.environ.get("TF_CONFIG", "").strip()
  if runtime.worker_hosts:
    built = tf_config_from_hosts(runtime.worker_hosts, runtime.task_index)
    if text and text != built:
      raise ClusterError("both TF_CONFIG and --worker_hosts describe the cluster; "
                         "unset TF_CONFIG or drop --worker_hosts/--task_index")
    # TFConfigClusterResolver, which the strategy uses, reads the environment.
    os.environ["TF_CONFIG"] = text = built
  if text in ("", "{}"):
    return Task()
  return parse_tf_config(text)


def multi_worker_strategy(runtime: RuntimeConfig) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy over the cluster of TF_CONFIG.

  Must run before TensorFlow starts executing (collective ops are set up at
  program start). Each worker contributes its GPUs, else its CPU.
  """
  global _STRATEGY
  task = resolve_task(runtime)
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver,
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))
  except (ValueError, RuntimeError, tf.errors.OpError) as error:
    raise ClusterError(
        f"cannot join the cluster as {task.name} ({_first_line(error)}); start "
        "every worker with the same TF_CONFIG cluster and its own task, before "
        "anything else runs TensorFlow") from None
  _STRATEGY = strategy
  preemption.reinstall()
  logging.info("MultiWorkerMirroredStrategy: %s of %d worker(s)%s, %d replica(s)",
               task.name, task.num_workers, " (chief)" if task.is_chief else "",
               strategy.num_replicas_in_sync)
  return strategy


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else type(error).__name__)[:160]


# --- where each worker writes -----------------------------------------------------
@contextlib.contextmanager
def worker_outputs(config: ExperimentConfig) -> Iterator[ExperimentConfig]:
  """Yields the configuration this process runs with.

  The chief (and every single-process run) gets `config` itself. A
  non-chief worker gets its --model_dir (writing modes) and --export_dir
  redirected to its scratch folder, emptied now and removed when the mode
  ends (also on errors and preemption); the chief's run directory is first
  checked read-only, so a configuration mismatch stops every worker.
  """
  global _ROLE, _STRATEGY
  task = resolve_task(config.runtime)
  model_dir = config.runtime.model_dir
  if task is None or task.is_chief:
    _ROLE = _Role(task, model_dir, None) if task else None
    try:
      yield config
    finally:
      _ROLE, _STRATEGY = None, None
    return
  from bayesnas_tf.runtime import run_dir  # pylint: disable=g-import-not-at-top
  if config.mode in _WRITING_MODES:
    run_dir.check_model_dir(config)
  scratch = os.path.join(model_dir, SCRATCH_PREFIX + task.name)
  if tf.io.gfile.exists(scratch):
    tf.io.gfile.rmtree(scratch)
  runtime = config.runtime
  if config.mode in _WRITING_MODES:
    runtime = dataclasses.replace(runtime, model_dir=scratch)
  export = dataclasses.replace(config.export,
                               export_dir=os.path.join(scratch, "exports"))
  logging.info("%s of %d workers: the chief writes the outputs; this worker "
               "writes to %s (removed at the end)", task.name, task.num_workers,
               scratch)
  _ROLE = _Role(task, model_dir, scratch)
  try:
    yield dataclasses.replace(config, runtime=runtime, export=export)
  finally:
    _ROLE, _STRATEGY = None, None
    if tf.io.gfile.exists(scratch):
      tf.io.gfile.rmtree(scratch)


def is_chief() -> bool:
  """Whether this process writes the outputs (True outside a cluster)."""
  return _ROLE is None or _ROLE.task is None or _ROLE.task.is_chief


def _chief_path(path: str) -> Optional[str]:
  """The chief's counterpart of a path inside this worker's scratch folder."""
  if _ROLE is None or _ROLE.scratch is None:
    return None
  relative = os.path.relpath(os.path.normpath(path), os.path.normpath(_ROLE.scratch))
  if relative == os.pardir or relative.startswith(os.pardir + os.sep):
    return None
  return os.path.normpath(os.path.join(_ROLE.model_dir, relative))


def checkpoint_directory(directory: str) -> str:
  """The folder whose checkpoints a manager of `directory` resumes from.

  `directory` itself for the chief and single processes; the chief's for a
  non-chief worker (its scratch folder starts empty).
  """
  return _chief_path(directory) or directory


def agree_on_checkpoint(latest: Optional[str]) -> None:
  """In a cluster of several workers, all of them must have found the same
  checkpoint to resume from: a --model_dir that only the chief's host sees
  would silently restart the others."""
  if _STRATEGY is not None and _ROLE is not None and _ROLE.task is not None and (
      _ROLE.task.num_workers > 1):
    _check_same_checkpoint(latest)


def _check_same_checkpoint(latest: Optional[str]) -> None:
  number = int(latest.rsplit("-", 1)[1]) if latest else -1
  strategy = _STRATEGY
  value = tf.constant([number], tf.int64)

  @tf.function
  def gather():
    return strategy.gather(strategy.run(lambda: tf.identity(value)), axis=0)

  found = sorted({int(v) for v in gather().numpy()})
  if len(found) > 1:
    raise ClusterError(
        f"the workers found different checkpoints in {_ROLE.model_dir} "
        f"(numbers {', '.join(map(str, found))}; -1: none); put --model_dir on a "
        "file system that every worker reads (e.g. NFS)")


# --- Cloud TPU -------------------------------------------------------------------
def tpu_strategy(tpu: str) -> tf.distribute.Strategy:
  """TPUStrategy on --tpu (a name or grpc:// address; empty: this TPU VM)."""
  address = tpu or "local"
  where = "this machine" if address == "local" else f"--tpu={tpu}"
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    if address != "local":  # A TPU VM's own chips need no connection.
      tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
  # The resolver asks the GCE metadata server and the Cloud TPU API (urllib
  # and API client errors) and TensorFlow (OpError, ValueError): whatever
  # fails here means no usable TPU, which is the user's to fix.
  except Exception as error:  # pylint: disable=broad-except
    reason = _first_line(error).split(". ")[0]
    raise ClusterError(
        f"--strategy=tpu found no TPU on {where} ({reason}); run on a Cloud TPU "
        "VM, or pass --tpu=NAME or --tpu=grpc://HOST:8470") from None
  preemption.reinstall()
  logging.info("TPUStrategy on %s: %d cores", address, strategy.num_replicas_in_sync)
  return strategy


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.TPUStrategy)

