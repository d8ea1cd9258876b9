"""Search benchmark: throughput, Hessian cost and memory (DESIGN.md 10).

    python bench/search_bench.py --small           # tiny + reduced supernets, minutes on 2 cores
    python bench/search_bench.py                   # + the paper's supernet at batch 18

On the CIFAR-10 subset of ../shared/data (or --data=npz:PATH / a TFDS name).
Prints one line per figure:
  * images/s of a search step (weights + gates, the loop's own step function);
  * each Hessian estimator's time for one batch, as a multiple of one search
    step; on the tiny supernet also its relative error against the exact
    diagonal (one Hessian-vector product per gate) and its time as a
    fraction of the exact oracle's;
  * peak memory (host RSS, and GPU peak when a GPU is present);
  * the one-off trace + first-call time of the step functions.
Figures are measurements, not assertions; nothing here is a test.
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
from bayesnas_tf.search import search_loop

_DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                             "..", "shared", "data", "cifar10_subset.npz")
flags.DEFINE_string("data", "npz:" + os.path.normpath(_DEFAULT_DATA),
                    "Dataset spec (npz:PATH, TFDS name or digits).")
flags.DEFINE_bool("small", False, "Only the reduced supernet.")
flags.DEFINE_integer("steps", 5, "Timed search steps per configuration.")
flags.DEFINE_integer("hessian_repeats", 2, "Timed calls per Hessian estimator.")
FLAGS = flags.FLAGS

# name: (cells, channels, primitives, batch size, estimators timed). "tiny"
# is small enough for the exact oracle (one HVP per gate: 120 gates).
APPROXIMATIONS = ("ggn", "ggn_mc", "diag_backprop")
CONFIGS = {
    "tiny": (3, 4, ("sep3", "max", "avg", "id"), 8, APPROXIMATIONS + ("exact",)),
    "small": (5, 8, None, 18, APPROXIMATIONS),
    "paper": (8, 36, None, 18, APPROXIMATIONS),
}


def peak_memory_line() -> str:
  rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  line = f"peak host RSS {rss_mib:.0f} MiB"
  if tf.config.list_physical_devices("GPU"):
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    line += f", peak GPU memory {peak:.0f} MiB"
  return line


def timed(fn, repeats):
  start = time.perf_counter()
  for _ in range(repeats):
    result = fn()
  _ = [np.asarray(r) for r in tf.nest.flatten(result)]  # wait for the device
  return (time.perf_counter() - start) / repeats


def bench(name, dataset, strategy):
  cells, channels, primitives, batch, estimators = CONFIGS[name]
  supernet = config_lib.SupernetConfig(cells=cells, channels=channels)
  if primitives:
    supernet = config_lib.SupernetConfig(cells=cells, channels=channels,
                                         primitives=primitives)
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset=FLAGS.data, batch_size=batch),
      supernet=supernet,
      runtime=config_lib.RuntimeConfig(model_dir=tempfile.mkdtemp(), progress=False),
  ).validate()
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  batches = [b for _, b in search.phase_batches(search_loop.SEARCH, 0)][:2]
  step = search.train_step_fn(train_gates=True)
  start = time.perf_counter()
  step(batches[0])
  compile_s = time.perf_counter() - start
  step_s = timed(lambda: step(batches[1]), FLAGS.steps)
  params = modes.count_params(search.net.trainable_variables)
  print(f"[{name}] supernet {cells} cells C={channels}: {params:,} trainable params, "
        f"{search.net.num_gates} gates")
  print(f"[{name}] search step (weights + gates), batch {batch}: "
        f"{step_s * 1000:.0f} ms/step = {batch / step_s:.1f} images/s "
        f"(trace + first call {compile_s:.1f} s)")
  seed = tf.constant([0, 0], tf.int64)
  results, seconds = {}, {}
  for method in estimators:
    fn = search.hessian_fn(method)
    start = time.perf_counter()
    results[method] = [h.numpy() for h in fn(batches[1], seed)]
    first_s = time.perf_counter() - start
    repeats = 1 if method == "exact" else FLAGS.hessian_repeats
    hess_s = first_s if method == "exact" else timed(
        lambda: fn(batches[1], seed), repeats)
    seconds[method] = hess_s
    print(f"[{name}] hessian {method}: {hess_s:.2f} s/batch = "
          f"{hess_s / step_s:.1f} search steps (first call {first_s:.1f} s)")
  if "exact" in results:
    exact = np.concatenate([h.ravel() for h in results["exact"]])
    for method in APPROXIMATIONS:
      got = np.concatenate([h.ravel() for h in results[method]])
      error = np.abs(got - exact).sum() / np.abs(exact).sum()
      # Scale-free figures too: diag_backprop drops the positive spatial
      # correlations of each feature map, so it is mostly a scale error.
      ranks = lambda v: np.argsort(np.argsort(v))
      spearman = np.corrcoef(ranks(got), ranks(exact))[0, 1]
      nonzero = exact > 1e-3 * exact.max()
      ratio = np.median(got[nonzero] / exact[nonzero])
      print(f"[{name}] hessian {method} relative L1 error vs exact: {error:.2e} "
            f"(Spearman {spearman:.3f}, median ratio to exact {ratio:.3g}); "
            f"time {seconds[method] / seconds['exact']:.2%} of exact's")
  spe = search.steps_per_epoch[search_loop.SEARCH]
  ggn_s = timed(lambda: search.hessian_fn("ggn")(batches[1], seed), 1)
  print(f"[{name}] hessian ggn / one search epoch on this data ({spe} steps): "
        f"{ggn_s / (spe * step_s):.2%}")
  print(f"[{name}] {peak_memory_line()}")


def main(argv):
  del argv
  config = config_lib.ExperimentConfig(mode="search")
  strategy = modes.prepare_runtime(config)
  dataset = data_lib.load_dataset(FLAGS.data)
  print(f"devices: {[d.name for d in tf.config.list_logical_devices()]}; "
        f"data {FLAGS.data} ({len(dataset.x_train)} train images)")
  bench("tiny", dataset, strategy)
  bench("small", dataset, strategy)
  if not FLAGS.small:
    bench("paper", dataset, strategy)


if __name__ == "__main__":
  app.run(main)
