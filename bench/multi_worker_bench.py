"""Multi-worker figure of issue 8 (called by bench/scale_bench.py): the search
step of a small supernet with N worker processes against one process, at
the same global batch.

    python bench/multi_worker_bench.py                 # 2 workers, batch 18 and 64
    python bench/multi_worker_bench.py --workers=2 --batches=32 --steps=5
    python bench/scale_bench.py --small                # prints these lines too

Each setting runs in fresh processes, one after the other: first the one
process (--strategy=default), then N workers started together on 127.0.0.1
(free ports, TF_CONFIG; --strategy=multi_worker_mirrored, one CPU device or
the GPUs of each). Every process builds the search step of the loop (weights
+ gates, the global batch split between the workers, gradients and
batch-norm sums all-reduced), runs one step to trace and times --steps
steps; the chief's line is printed with images/s, s/step and its peak host
RSS, then the speedup. On one machine the workers share its cores, so the
figure is the cost of the collectives (gRPC between processes) rather than a
speed-up; across hosts each worker brings its own. Figures, not assertions.
"""

import itertools
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = "npz:" + os.path.normpath(os.path.join(
    HERE, "..", "..", "shared", "data", "cifar10_subset.npz"))
SMALL_SUPERNET = (5, 8)   # cells, C: scale_bench.py --small
TIMEOUT_S = 1800


def time_search_step(data: str, batch: int, steps: int, strategy: str,
                     cells: int = SMALL_SUPERNET[0],
                     channels: int = SMALL_SUPERNET[1]) -> None:
  """In this process: time the search step; the chief prints its line."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.runtime import cluster  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.data import arrays as data_lib  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.search import search_loop  # pylint: disable=g-import-not-at-top
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset=data, batch_size=batch),
      supernet=config_lib.SupernetConfig(cells=cells, channels=channels),
      runtime=config_lib.RuntimeConfig(model_dir=tempfile.mkdtemp(), progress=False,
                                       strategy=strategy),
  ).validate()
  task = cluster.resolve_task(config.runtime)
  strategy_object = modes.prepare_runtime(config)
  dataset = data_lib.load_dataset(data)
  search = search_loop.BayesNASSearch(config, dataset, strategy_object)
  batches = [b for _, b in itertools.islice(
      search.phase_batches(search_loop.SEARCH, 0), 2)]
  step = search.train_step_fn(train_gates=True)
  start = time.perf_counter()
  _ = [float(v) for v in step(batches[0])]
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    _ = [float(v) for v in step(batches[1])]
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  if task is None or task.is_chief:
    workers = 1 if task is None else task.num_workers
    print(json.dumps({"workers": workers, "batch": batch, "step_s": step_s,
                      "first_s": first, "rss_mib": rss,
                      "replicas": strategy_object.num_replicas_in_sync}), flush=True)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _command(data, batch, steps, strategy, cells, channels):
  return [sys.executable, os.path.abspath(__file__), "--role=time",
          f"--data={data}", f"--batches={batch}", f"--steps={steps}",
          f"--strategy={strategy}", f"--cells={cells}", f"--channels={channels}"]


def _run_setting(data, batch, steps, workers, cells, channels):
  """The chief's figures for one process (workers=1) or a local cluster."""
  environment = dict(os.environ)
  environment.pop("TF_CONFIG", None)
  if workers == 1:
    commands = [(_command(data, batch, steps, "default", cells, channels), environment)]
  else:
    # One CPU device per worker, as in TF's multi-worker guide, unless the
    # caller chose the GPUs (CUDA_VISIBLE_DEVICES).
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(workers)]
    commands = []
    for index in range(workers):
      env = dict(environment, TF_CONFIG=json.dumps(
          {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}))
      commands.append((_command(data, batch, steps, "multi_worker_mirrored", cells,
                                channels), env))
  with tempfile.TemporaryDirectory() as logs:
    processes = []
    for index, (command, env) in enumerate(commands):
      with open(os.path.join(logs, f"{index}.err"), "w") as err:
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE,
                                          stderr=err, text=True, env=env))
    try:
      outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in processes]
    finally:
      for p in processes:
        if p.poll() is None:
          p.kill()
          p.wait()
    if any(p.returncode for p in processes):
      with open(os.path.join(logs, "0.err")) as f:
        last = (f.read().strip().splitlines() or ["?"])[-1][:200]
      return None, last
  lines = [l for l in outputs[0].splitlines() if l.startswith("{")]
  return (json.loads(lines[-1]), None) if lines else (None, "no figures printed")


def print_comparison(data: str = DEFAULT_DATA, batches=(18, 64), workers: int = 2,
                     steps: int = 3, cells: int = SMALL_SUPERNET[0],
                     channels: int = SMALL_SUPERNET[1]) -> None:
  """One line per (batch, setting): 1 process, then `workers` workers."""
  label = f"[small {cells} cells C={channels}, multi-worker]"
  for batch in batches:
    if batch % workers:
      print(f"{label} batch {batch:3d}: skipped, not divisible by {workers} "
            "workers", flush=True)
      continue
    single = None
    for count in (1, workers):
      figures, error = _run_setting(data, batch, steps, count, cells, channels)
      name = "1 process " if count == 1 else f"{count} workers"
      if figures is None:
        print(f"{label} batch {batch:3d} {name}: failed: {error}", flush=True)
        continue
      speed = batch / figures["step_s"]
      line = (f"{label} batch {batch:3d} {name}: {speed:6.2f} images/s "
              f"({figures['step_s']:.3f} s/step, median of {steps}; trace + first "
              f"step {figures['first_s']:.0f} s); chief peak host RSS "
              f"{figures['rss_mib']:,.0f} MiB")
      if count == 1:
        single = figures
      elif single is not None:
        line += f"; {single['step_s'] / figures['step_s']:.2f}x one process"
      print(line, flush=True)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  batches = [int(b) for b in values.batches]
  if values.role == "time":
    time_search_step(values.data, batches[0], values.steps, values.strategy,
                     values.cells, values.channels)
    return
  print(f"{os.cpu_count()} CPUs; data {values.data}", flush=True)
  print_comparison(values.data, batches, values.workers, values.steps,
                   values.cells, values.channels)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("data", DEFAULT_DATA, "Dataset spec.")
  flags.DEFINE_list("batches", ["18", "64"], "Global batch sizes.")
  flags.DEFINE_integer("workers", 2, "Worker processes of the cluster.")
  flags.DEFINE_integer("steps", 3, "Timed steps per setting.")
  flags.DEFINE_integer("cells", SMALL_SUPERNET[0], "Supernet cells.")
  flags.DEFINE_integer("channels", SMALL_SUPERNET[1], "Supernet channels C.")
  flags.DEFINE_enum("role", "compare", ["compare", "time"], "Internal.")
  flags.DEFINE_string("strategy", "default", "Internal: the timed process's strategy.")
  app.run(main)
