"""Retrain benchmark: training throughput of the CIFAR child networks and the
cost of a SavedModel export (DESIGN.md 10).

    python bench/retrain_bench.py --small    # the reduced network only
    python bench/retrain_bench.py            # + the paper's 20-cell C=36 network

Uses the loop's own train step (`train.Trainer`) on the CIFAR-10 subset of
../shared/data; prints one line per figure. Measurements, not assertions.
"""

import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from bayesnas_tf import config as config_lib
from bayesnas_tf import modes
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.spaces.registry import resolve_genotype
from bayesnas_tf.training import export as export_lib
from bayesnas_tf.training import train as train_lib

_DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                             "..", "shared", "data", "cifar10_subset.npz")
flags.DEFINE_string("data", "npz:" + os.path.normpath(_DEFAULT_DATA),
                    "Dataset spec (npz:PATH, TFDS name or digits).")
flags.DEFINE_string("genotype", "bayesnas_l0.01", "Genotype to build.")
flags.DEFINE_bool("small", False, "Only the reduced network.")
flags.DEFINE_integer("steps", 5, "Timed training steps per configuration.")
FLAGS = flags.FLAGS

# name: (cells, channels, batch size)
CONFIGS = {"small": (8, 16, 64), "paper": (20, 36, 128)}


def bench(name, dataset, strategy):
  cells, channels, batch = CONFIGS[name]
  config = config_lib.ExperimentConfig(
      mode="retrain",
      data=config_lib.DataConfig(dataset=FLAGS.data, batch_size=batch, cutout=16),
      train=config_lib.TrainConfig(genotype=FLAGS.genotype, cells=cells,
                                   channels=channels, epochs=1),
      runtime=config_lib.RuntimeConfig(model_dir=tempfile.mkdtemp(), progress=False),
  ).validate()
  data = data_lib.ArrayTrainingData(dataset, data_lib.AugmentConfig(4, True, 16))
  genotype = resolve_genotype(FLAGS.genotype)
  with strategy.scope():
    model = modes.build_child_network(config, genotype, data.num_classes,
                                      data.image_shape)
  trainer = train_lib.Trainer(config, model, data, strategy)
  batches = list(strategy.experimental_distribute_dataset(
      data.train(batch_size=batch, seed=0, epoch=0).take(2)))
  start = time.perf_counter()
  trainer.train_step(batches[0])
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    result = trainer.train_step(batches[1])
  np.asarray(result[0])
  step = (time.perf_counter() - start) / FLAGS.steps
  params = modes.count_params(model.trainable_variables)
  print(f"[{name}] {FLAGS.genotype}, {cells} cells C={channels}: {params:,} params")
  print(f"[{name}] train step, batch {batch}: {step * 1000:.0f} ms/step = "
        f"{batch / step:.1f} images/s (trace + first call {first:.1f} s)")
  export_dir = tempfile.mkdtemp()
  start = time.perf_counter()
  path = export_lib.export_saved_model(
      model, export_dir=export_dir, model_name="bench",
      image_shape=data.image_shape, mean=data.mean, std=data.std,
      class_names=data.class_names, genotype_json=genotype.to_json())
  export_s = time.perf_counter() - start
  start = time.perf_counter()
  loaded = tf.saved_model.load(path)
  images = tf.constant(dataset.x_test[:batch])
  loaded.signatures["serving_default"](images=images)
  load_s = time.perf_counter() - start
  print(f"[{name}] SavedModel export {export_s:.1f} s, load + first batch "
        f"{load_s:.1f} s")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  print(f"[{name}] peak host RSS {rss:.0f} MiB")


def main(argv):
  del argv
  strategy = modes.prepare_runtime(config_lib.ExperimentConfig(mode="retrain"))
  dataset = data_lib.load_dataset(FLAGS.data)
  bench("small", dataset, strategy)
  if not FLAGS.small:
    bench("paper", dataset, strategy)


if __name__ == "__main__":
  app.run(main)
