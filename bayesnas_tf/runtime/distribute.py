"""`tf.distribute` strategies by name (Model Garden names, DESIGN.md 9)."""

from __future__ import annotations

from absl import logging
import tensorflow as tf

from bayesnas_tf.config import STRATEGIES, RuntimeConfig
from bayesnas_tf.errors import ConfigError


def configure_logical_cpus(count: int) -> None:
  """Splits the host CPU into `count` logical devices (0 leaves it alone).

  Lets `mirrored` run with several replicas on a machine without GPUs. Must
  run before TensorFlow initialises its devices.
  """
  if count <= 0:
    return
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError as error:
    existing = len(tf.config.list_logical_devices("CPU"))
    if existing != count:
      raise ConfigError(
          f"cannot split the CPU into {count} logical devices after "
          f"TensorFlow started ({existing} exist): {error}") from None


def make_strategy(name: str, runtime=None) -> tf.distribute.Strategy:
  """Returns the strategy called `name`.

  default: no distribution (the default strategy); one_device: the first
  GPU, else the CPU; mirrored: all local GPUs, else all logical CPUs;
  multi_worker_mirrored: every worker of the TF_CONFIG cluster (or
  --worker_hosts); tpu: the TPU of --tpu. `runtime` (a RuntimeConfig) gives
  the last two their cluster flags.
  """
  from bayesnas_tf.runtime import cluster  # pylint: disable=g-import-not-at-top
  if name == "multi_worker_mirrored":
    return cluster.multi_worker_strategy(runtime or RuntimeConfig(strategy=name))
  if name == "tpu":
    return cluster.tpu_strategy(runtime.tpu if runtime else "")
  gpus = tf.config.list_logical_devices("GPU")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    device = gpus[0].name if gpus else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)
  if name == "mirrored":
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    logging.info("MirroredStrategy over %s", devices)
    return tf.distribute.MirroredStrategy(devices)
  raise ConfigError(
      f"unknown strategy {name!r}; valid strategies are {', '.join(STRATEGIES)}")


def steps_per_epoch(batch_size: int, num_examples: int,
                    strategy: tf.distribute.Strategy) -> int:
  """Full global batches per epoch; a batch that fits no replica split or no
  training split is a user error."""
  steps = num_examples // batch_size
  if steps == 0:
    raise ConfigError(
        f"--batch_size={batch_size} is larger than the training split "
        f"({num_examples} examples); lower --batch_size")
  if batch_size % strategy.num_replicas_in_sync:
    raise ConfigError(
        f"--batch_size={batch_size} must be divisible by the "
        f"{strategy.num_replicas_in_sync} replicas")
  return steps


def distribute_dataset(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset,
                       global_batch_size: int, pad: bool = False):
  """`dataset`'s global batches split into per-replica slices.

  Every worker builds the same global pipeline and keeps its own contiguous
  slice of every global batch, split between its replicas: replica r of N
  sees examples [r B/N, (r+1) B/N) of each batch however the replicas are
  spread over workers, and every worker runs the same number of steps (a
  worker with one batch more would wait forever in an all-reduce). No
  auto-sharding guesses are involved.

  `pad` (evaluation): batches shorter than `global_batch_size` (the last
  one) are filled up with examples of label -1, which the evaluation steps
  skip, to a multiple of the replicas. No replica ever gets an empty batch
  (a mean over a dimension of size 0 is NaN and poisons the all-reduce) and
  XLA/TPUs see one static shape. Training batches are full (drop_remainder)
  and must split evenly (steps_per_epoch checks it).

  One replica (and no TPU): the strategy's own distribution, unchanged.
  """
  from bayesnas_tf.runtime import cluster  # pylint: disable=g-import-not-at-top
  replicas = strategy.num_replicas_in_sync
  if replicas == 1 and not cluster.is_tpu(strategy):
    return strategy.experimental_distribute_dataset(dataset)
  per_replica = -(-global_batch_size // replicas)
  padded = per_replica * replicas
  if not pad and padded != global_batch_size:
    raise ConfigError(f"--batch_size={global_batch_size} must be divisible by the "
                      f"{replicas} replicas")

  def fill(images, labels):
    missing = padded - tf.shape(labels)[0]
    images = tf.pad(images, [[0, missing]] + [[0, 0]] * (images.shape.rank - 1))
    labels = tf.pad(labels, [[0, missing]], constant_values=-1)
    return (tf.ensure_shape(images, [padded] + images.shape[1:].as_list()),
            tf.ensure_shape(labels, [padded]))

  if pad:
    dataset = dataset.map(fill)

  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    local = replicas // context.num_input_pipelines
    start = context.input_pipeline_id * local * per_replica
    stop = start + local * per_replica
    # Python-int bounds keep the batch dimension static.
    worker = dataset.map(lambda *batch: tuple(t[start:stop] for t in batch))
    return worker.rebatch(per_replica) if local > 1 else worker

  return strategy.distribute_datasets_from_function(dataset_fn)


def add_weight_decay(grads, variables, weight_decay: float, scale=None):
  """Coupled weight decay (PyTorch SGD / DARTS semantics), as a gradient term.

  Adds weight_decay * w to each replica's share of the gradient of each
  variable, i.e. the gradient of 0.5 * weight_decay * ||w||^2 added to the
  loss, split over the replicas so that their all-reduced sum carries it
  once (ALGORITHM.md 9.1). Written on the gradients rather than in the loss:
  the loss form puts a square, a sum and their gradients (a tile and two
  products) into the traced step for every variable, about a quarter of a
  supernet step's graph (measured on a 3-cell supernet: 12,607 against
  9,640 ops without decay), which costs tracing and graph-optimisation time
  at every start and brings nothing. A variable without a gradient (None)
  still decays, as it did through the loss. `scale` multiplies the term when
  the gradients are those of a scaled loss (float16 loss scaling).
  """
  if not weight_decay:
    return grads
  context = tf.distribute.get_replica_context()
  replicas = context.num_replicas_in_sync if context is not None else 1
  factor = tf.constant(weight_decay / replicas, tf.float32)
  if scale is not None:
    factor = factor * tf.cast(scale, tf.float32)
  decayed = []
  for g, v in zip(grads, variables):
    term = tf.cast(factor, v.dtype) * v
    decayed.append(term if g is None else g + tf.cast(term, g.dtype))
  return decayed


def clip_summed_gradients(grads, clip_norm):
  """Each replica's share of the all-reduced gradient, clipped by global norm.

  Keras 3 optimizers apply `global_clipnorm` to each replica's own gradient
  before they all-reduce it, so with several replicas a clipped step is not
  the one-process step (measured on a Dense layer with two replicas: 45% of
  the update off). The training steps therefore clip here when the strategy
  has several replicas: all-reduce, clip the sum as one process would, and
  hand the optimizer 1/N of it per replica; its own all-reduce sums the
  shares back, and its own clipping then finds the norm within bounds.
  `clip_norm` may be a tensor (scaled along with a scaled loss). With one
  replica or no clipping the gradients pass unchanged.
  """
  context = tf.distribute.get_replica_context()
  if clip_norm is None or (isinstance(clip_norm, (int, float)) and not clip_norm) or (
      context is None or context.num_replicas_in_sync == 1):
    return grads
  present = [i for i, g in enumerate(grads) if g is not None]
  total = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
  clipped, _ = tf.clip_by_global_norm(total, clip_norm)
  shares = list(grads)
  for i, g in zip(present, clipped):
    shares[i] = g / context.num_replicas_in_sync
  return shares


def synchronize_batch_norm(model, strategy: tf.distribute.Strategy) -> None:
  """Global-batch statistics for the Keras BatchNormalization layers of
  `model` when the strategy has several replicas.

  Our own BatchNorm (batch_norm.py) always all-reduces its sums; Keras's
  normalises each replica's slice with that slice's statistics unless
  `synchronized` is set, so N replicas would not compute what one process
  computes (the compressed CNNs use Keras's layer).
  """
  import keras  # pylint: disable=g-import-not-at-top
  if strategy.num_replicas_in_sync == 1:
    return
  for layer in model.layers:  # The compressed CNNs are flat chains.
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.synchronized = True
