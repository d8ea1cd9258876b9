"""Scaling benchmark: dtype policy x XLA x recomputation x batch size.

    python bench/scale_bench.py --small        # reduced supernet, minutes on 2 cores
    python bench/scale_bench.py                # the paper's supernet, batch 18 and 64
    python bench/scale_bench.py --only=mixed_bfloat16+recompute --batches=64

Each configuration runs in its own process (peak memory is per process):
it builds the search step of the supernet (the loop's own step function,
weights + gates), runs one step to trace, then times --steps steps and
prints one line: images/s, s/step, peak host RSS (and peak GPU memory on a
GPU), and the projected wall time of the paper's search at that speed (one
iteration: a warm-up pass over 5,000 and a search pass over 45,000 CIFAR-10
images, ALGORITHM.md 3.2-3.3; the Hessian is a few steps more).

Configurations: float32 and mixed_bfloat16 (mixed_float16 too when a GPU is
present), each with XLA (+jit) off/on and cell recomputation (+recompute)
off/on. A configuration whose projected memory does not fit --max_rss_mib
is skipped with a line that says so. Then the small supernet's search step
with --workers worker processes against one process, at the same batches
(bench/multi_worker_bench.py; --workers=0 skips it). Figures, not
assertions.
"""

import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

_DEFAULT_DATA = os.path.normpath(os.path.join(
    HERE, "..", "..", "shared", "data", "cifar10_subset.npz"))
flags.DEFINE_string("data", "npz:" + _DEFAULT_DATA, "Dataset spec.")
flags.DEFINE_bool("small", False, "A reduced supernet (5 cells, C=8).")
flags.DEFINE_list("batches", ["18", "64"], "Batch sizes.")
flags.DEFINE_list("only", None, "Run only these configurations "
                  "(e.g. float32,mixed_bfloat16+jit+recompute).")
flags.DEFINE_integer("steps", 3, "Timed steps per configuration.")
flags.DEFINE_integer("max_rss_mib", 20000,
                     "Skip configurations expected to need more host memory.")
flags.DEFINE_integer("workers", 2, "Worker processes of the multi-worker "
                     "comparison on the small supernet (0: skip it).")
flags.DEFINE_integer("timeout_s", 1800, "Give up on one configuration after "
                     "this many seconds (XLA compiling the paper supernet on "
                     "a few cores can take long); it prints a line and the "
                     "next one runs.")
flags.DEFINE_string("worker", None, "Internal: run one configuration.")
flags.DEFINE_integer("worker_batch", 18, "Internal.")
FLAGS = flags.FLAGS

# The paper's search, one iteration (ALGORITHM.md 3.2-3.3).
PAPER_IMAGES = 5000 + 45000


def supernet_size():
  return (5, 8) if FLAGS.small else (8, 36)


def worker(variant: str, batch: int) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.data import arrays as data_lib  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.search import search_loop  # pylint: disable=g-import-not-at-top
  parts = variant.split("+")
  cells, channels = supernet_size()
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset=FLAGS.data, batch_size=batch),
      supernet=config_lib.SupernetConfig(cells=cells, channels=channels),
      runtime=config_lib.RuntimeConfig(
          model_dir=tempfile.mkdtemp(), progress=False, dtype_policy=parts[0],
          jit_compile="jit" in parts, recompute_cells="recompute" in parts),
  ).validate()
  strategy = modes.prepare_runtime(config)
  dataset = data_lib.load_dataset(FLAGS.data)
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  batches = [b for _, b in search.phase_batches(search_loop.SEARCH, 0)][:2]
  step = search.train_step_fn(train_gates=True)
  start = time.perf_counter()
  _ = [float(v) for v in step(batches[0])]
  first = time.perf_counter() - start
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    _ = [float(v) for v in step(batches[1])]
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  memory = f"peak host RSS {rss:,.0f} MiB"
  if tf.config.list_physical_devices("GPU"):
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    memory += f", peak GPU memory {peak:,.0f} MiB"
  hours = PAPER_IMAGES / batch * step_s / 3600.0
  print(f"[{'small' if FLAGS.small else 'paper'} {cells} cells C={channels}] "
        f"batch {batch:3d} {variant:34s} {batch / step_s:6.2f} images/s "
        f"({step_s:6.2f} s/step, median of {FLAGS.steps}; trace + first step "
        f"{first:.0f} s); {memory}; paper search (1 iteration, "
        f"{PAPER_IMAGES:,} images) {hours:.1f} h", flush=True)


def variants(gpu: bool):
  policies = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if gpu else [])
  for policy, jit, recompute in itertools.product(policies, (False, True),
                                                  (False, True)):
    yield policy + ("+jit" if jit else "") + ("+recompute" if recompute else "")


def expected_rss_mib(variant: str, batch: int) -> float:
  """A rough bound from measurements on the paper supernet (float32:
  ~4.3 GiB + ~215 MiB/image kept activations; recomputation keeps about a
  fifth; bfloat16 halves the activations)."""
  if FLAGS.small:
    return 0.0
  per_image = 215.0 / (5.0 if "recompute" in variant else 1.0)
  if "bfloat16" in variant or "float16" in variant:
    per_image /= 2.0
  return 4300.0 + per_image * batch


def main(argv):
  del argv
  if FLAGS.worker:
    worker(FLAGS.worker, FLAGS.worker_batch)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpu = bool(tf.config.list_physical_devices("GPU"))
  chosen = FLAGS.only or list(variants(gpu))
  print(f"{os.cpu_count()} CPUs, GPU: {gpu}; data {FLAGS.data}", flush=True)
  for batch, variant in itertools.product([int(b) for b in FLAGS.batches], chosen):
    need = expected_rss_mib(variant, batch)
    if need > FLAGS.max_rss_mib:
      print(f"[paper] batch {batch:3d} {variant:34s} skipped: needs about "
            f"{need:,.0f} MiB > --max_rss_mib={FLAGS.max_rss_mib}", flush=True)
      continue
    args = [sys.executable, os.path.abspath(__file__), f"--worker={variant}",
            f"--worker_batch={batch}", f"--data={FLAGS.data}",
            f"--steps={FLAGS.steps}"] + (["--small"] if FLAGS.small else [])
    try:
      result = subprocess.run(args, capture_output=True, text=True, check=False,
                              timeout=FLAGS.timeout_s)
    except subprocess.TimeoutExpired:
      print(f"batch {batch:3d} {variant:34s} gave up after --timeout_s="
            f"{FLAGS.timeout_s} s (trace, compilation and {FLAGS.steps} steps "
            "not done)", flush=True)
      continue
    lines = [l for l in result.stdout.splitlines() if l.startswith("[")]
    if result.returncode or not lines:
      error = (result.stderr.strip().splitlines() or ["?"])[-1][:200]
      print(f"batch {batch:3d} {variant:34s} failed: {error}", flush=True)
    else:
      print(lines[-1], flush=True)
  if FLAGS.workers > 1:
    import multi_worker_bench  # pylint: disable=g-import-not-at-top
    multi_worker_bench.print_comparison(
        FLAGS.data, [int(b) for b in FLAGS.batches], FLAGS.workers, FLAGS.steps)


if __name__ == "__main__":
  app.run(main)
