"""`tf.distribute` strategies by name (Model Garden names, DESIGN.md 9)."""

from __future__ import annotations

from absl import logging
import tensorflow as tf

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


def make_strategy(name: str) -> tf.distribute.Strategy:
  """Returns the strategy called `name`.

  default: no distribution (the default strategy); one_device: the first
  GPU, else the CPU; mirrored: all local GPUs, else all logical CPUs.
  """
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
      f"unknown strategy {name!r}; valid strategies are default, one_device, "
      "mirrored")


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
