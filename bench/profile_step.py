"""Where a search step's time goes: op time per kind, from a TensorFlow trace.

    python bench/profile_step.py                  # paper supernet, batch 18
    python bench/profile_step.py --cells=5 --channels=8 --logdir=/tmp/trace

Builds the search step (as `bench/step_compare.py` does), runs it twice,
then traces one more step with `tf.profiler.experimental` and sums the op
events of TensorFlow's compute threads by kind (dilated convs, 1x1 convs,
depthwise convs, batch norm, gate scaling and sums, ...). The shares are of
op time summed over threads, which on a busy CPU is about threads x wall
time. The trace stays in --logdir for TensorBoard's profile plugin. A
figure, not a test.
"""

import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from bayesnas_tf import config as config_lib
from bayesnas_tf import modes
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.search import search_loop

_DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                             "..", "shared", "data", "cifar10_subset.npz")
flags.DEFINE_string("data", "npz:" + os.path.normpath(_DEFAULT_DATA), "Dataset spec.")
flags.DEFINE_integer("batch_size", 18, "Search batch size.")
flags.DEFINE_integer("cells", 8, "Supernet cells (paper: 8).")
flags.DEFINE_integer("channels", 36, "Supernet C (paper: 36).")
flags.DEFINE_string("dtype_policy", "float32", "Keras dtype policy.")
flags.DEFINE_string("logdir", None, "Trace folder (default: a new temporary one).")
FLAGS = flags.FLAGS

_SLICING = ("Slice", "StridedSlice", "StridedSliceGrad", "Pad", "SpaceToBatchND",
            "BatchToSpaceND", "ConcatV2", "Split", "SplitV")


def op_kind(path: str, op_type: str) -> str:
  """The kind of one traced op, from its name scope and (oneDNN) type."""
  op_type = op_type.replace("_MklNative", "").replace("_Mkl", "")
  if op_type.startswith("DepthwiseConv2dNative"):
    return "depthwise convs"
  if op_type.startswith("Conv2D") or op_type == "MatMul":
    # The kxk conv of a dil op (its 1x1 folded in, or in "pointwise"); the
    # custom gradient of fast_conv.same_conv (matmuls among them) carries
    # only its own scope. Other 1x1 convs are matmuls
    # (fast_conv.pointwise) or Conv2D.
    if ("dilated_conv_gradient" in path
        or (re.search(r"/dil\d+(_\d+)?/", path)
            and not re.search(r"/pointwise(_\d+)?/", path))):
      return "dense dilated convs (dil3, dil5)"
    return "1x1 and reduction convs"
  if "BatchNorm" in op_type:
    return "batch norm"
  if op_type in ("Mul", "AddN", "Sum", "AddV2"):
    return "gate scaling and sums (Mul, AddN, Sum, AddV2)"
  if op_type.startswith("Relu"):
    return "ReLU"
  if op_type in _SLICING:
    return "slicing, padding, concat"
  if "Pool" in op_type:
    return "pooling"
  if "Variable" in op_type or op_type in ("Sub",):
    return "variable reads and updates (SGD)"
  return "other"


def op_times(xplane_path: str) -> collections.Counter:
  """Seconds per op kind over the compute threads of one trace."""
  space = xplane_pb2.XSpace()
  with open(xplane_path, "rb") as f:
    space.ParseFromString(f.read())
  times = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ":" not in name or "::" in name:  # executor bookkeeping, not an op
          continue
        path, op_type = name.rsplit(":", 1)
        times[op_kind(path, op_type)] += event.duration_ps * 1e-12
  return times


def main(argv):
  del argv
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset=FLAGS.data, batch_size=FLAGS.batch_size),
      supernet=config_lib.SupernetConfig(cells=FLAGS.cells, channels=FLAGS.channels),
      runtime=config_lib.RuntimeConfig(model_dir=tempfile.mkdtemp(), progress=False,
                                       dtype_policy=FLAGS.dtype_policy)).validate()
  strategy = modes.prepare_runtime(config)
  search = search_loop.BayesNASSearch(config, data_lib.load_dataset(FLAGS.data),
                                      strategy)
  batch = next(b for _, b in search.phase_batches(search_loop.SEARCH, 0))
  step = search.train_step_fn(train_gates=True)
  for _ in range(2):  # trace, then one warm step
    _ = [float(v) for v in step(batch)]
  logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="profile_step_")
  tf.profiler.experimental.start(logdir)
  start = time.perf_counter()
  _ = [float(v) for v in step(batch)]
  wall = time.perf_counter() - start
  tf.profiler.experimental.stop()
  traces = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*",
                                         "*.xplane.pb")))
  times = op_times(traces[-1])
  total = sum(times.values())
  print(f"search step, {FLAGS.cells} cells C={FLAGS.channels}, batch "
        f"{FLAGS.batch_size}, {FLAGS.dtype_policy}: {wall:.2f} s wall, "
        f"{total:.2f} s op time over threads (trace in {logdir})")
  for kind, seconds in times.most_common():
    print(f"  {kind:48s} {100 * seconds / total:5.1f}%  {seconds:7.2f} s")


if __name__ == "__main__":
  app.run(main)
