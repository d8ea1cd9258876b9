"""Before/after search-step time, measured side by side in one run.

    git worktree add /tmp/base 886b56d          # the implementation before
    python bench/step_compare.py --base=/tmp/base [--rounds=5]

Starts one worker process per implementation (the checkout at --base and
this checkout, each with its own options), builds the paper supernet's
search step in each (one after the other, so the traces do not compete),
then asks them for one step at a time, alternately, for --rounds rounds:
both see the same machine load, which on a shared machine matters more than
anything else. Prints the per-step times, their medians, the ratio and each
worker's peak RSS. A figure, not a test.

--variants lists the configurations of this checkout to time against the
base, e.g. `float32,mixed_bfloat16,float32+jit,float32+recompute`
(+tfthreads: TensorFlow's default thread pools instead of threads.py's);
--base_variant is the base's (float32; another one needs a base that has
the option).
"""

import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_DATA = os.path.normpath(os.path.join(
    HERE, "..", "..", "shared", "data", "cifar10_subset.npz"))

flags.DEFINE_string("base", None, "Checkout of the implementation before.")
flags.DEFINE_string("data", "npz:" + _DEFAULT_DATA, "Dataset spec.")
flags.DEFINE_list("variants", ["float32"],
                  "Configurations of this checkout: a dtype policy with "
                  "optional +jit and +recompute.")
flags.DEFINE_string("base_variant", "float32", "Configuration of the base.")
flags.DEFINE_integer("batch_size", 18, "Search batch size.")
flags.DEFINE_integer("cells", 8, "Supernet cells (paper: 8).")
flags.DEFINE_integer("channels", 36, "Supernet C (paper: 36).")
flags.DEFINE_integer("rounds", 5, "Alternating rounds of one step each.")
flags.DEFINE_string("worker_root", None, "Internal: a worker's checkout.")
flags.DEFINE_string("worker_variant", "float32", "Internal.")
FLAGS = flags.FLAGS


def worker() -> None:
  """Builds one search step, then runs it once per 'step' line on stdin."""
  sys.path.insert(0, FLAGS.worker_root)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  try:  # The layout of issue 19; a --base checkout before it has data.py.
    from bayesnas_tf.data import arrays as data_lib  # pylint: disable=g-import-not-at-top
  except ImportError:
    from bayesnas_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.search import search_loop  # pylint: disable=g-import-not-at-top
  parts = FLAGS.worker_variant.split("+")
  runtime = {"model_dir": tempfile.mkdtemp(), "progress": False,
             "jit_compile": "jit" in parts}
  fields = {f.name for f in dataclasses.fields(config_lib.RuntimeConfig)}
  if "dtype_policy" in fields:
    runtime["dtype_policy"] = parts[0]
  if "recompute" in parts:
    runtime["recompute_cells"] = True
  if "tfthreads" in parts:  # TF's default pools instead of threads.py's.
    runtime["inter_op_threads"] = runtime["intra_op_threads"] = 0
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset=FLAGS.data, batch_size=FLAGS.batch_size),
      supernet=config_lib.SupernetConfig(cells=FLAGS.cells, channels=FLAGS.channels),
      runtime=config_lib.RuntimeConfig(**runtime)).validate()
  strategy = modes.prepare_runtime(config)
  dataset = data_lib.load_dataset(FLAGS.data)
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  batch = next(b for _, b in search.phase_batches(search_loop.SEARCH, 0))
  step = search.train_step_fn(train_gates=True)
  start = time.perf_counter()
  _ = [float(v) for v in step(batch)]
  print(f"ready {time.perf_counter() - start:.1f}", flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    start = time.perf_counter()
    _ = [float(v) for v in step(batch)]
    print(f"{time.perf_counter() - start:.4f}", flush=True)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  print(f"rss {rss:.0f}", flush=True)
  del tf


def main(argv):
  del argv
  if FLAGS.worker_root:
    worker()
    return
  if not FLAGS.base:
    raise app.UsageError("--base=PATH (a checkout of the commit before) is required")
  here = os.path.normpath(os.path.join(HERE, ".."))
  base_name = "base" + ("" if FLAGS.base_variant == "float32"
                        else f" {FLAGS.base_variant}")
  jobs = [(base_name, os.path.abspath(FLAGS.base), FLAGS.base_variant)] + [
      (f"new {v}", here, v) for v in FLAGS.variants]
  common = [f"--data={FLAGS.data}", f"--batch_size={FLAGS.batch_size}",
            f"--cells={FLAGS.cells}", f"--channels={FLAGS.channels}"]
  workers = []
  for name, root, variant in jobs:
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--worker_root={root}",
         f"--worker_variant={variant}", *common],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    ready = process.stdout.readline().split()
    print(f"{name}: built, trace + first step {ready[1]} s", flush=True)
    workers.append((name, process))
  times = {name: [] for name, _ in workers}
  for _ in range(FLAGS.rounds):
    for name, process in workers:
      process.stdin.write("step\n")
      times[name].append(float(process.stdout.readline()))
  peaks = {}
  for name, process in workers:
    process.stdin.write("stop\n")
    process.stdin.flush()
    peaks[name] = process.stdout.readline().split()[1]
    process.wait()
  base = np.median(times[base_name])
  print(f"paper supernet ({FLAGS.cells} cells, C={FLAGS.channels}), batch "
        f"{FLAGS.batch_size}, {FLAGS.rounds} alternating rounds, "
        f"{os.cpu_count()} CPUs:")
  for name, values in times.items():
    median = np.median(values)
    print(f"  {name:28s} median {median:6.2f} s/step "
          f"({FLAGS.batch_size / median:5.2f} images/s, {base / median:4.2f}x "
          f"base; peak RSS {peaks[name]} MiB); steps "
          + " ".join(f"{v:.2f}" for v in values), flush=True)


if __name__ == "__main__":
  app.run(main)
