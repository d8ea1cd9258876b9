"""threads.py: TensorFlow's thread pools per mode, and flags that cannot apply;
Grappler on a host without accelerators (modes.configure_graph_optimizer)."""

import dataclasses
import logging
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from bayesnas_tf import config as config_lib
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.runtime import threads


def _config(mode, **runtime):
  return config_lib.ExperimentConfig(
      mode=mode, runtime=config_lib.RuntimeConfig(**runtime))


@pytest.mark.parametrize("mode, accelerator, cpus, runtime, expected", [
    # Cell networks on a CPU-only host: whole ops side by side, one thread each.
    ("search", False, 16, {}, (16, 1)),
    ("study", False, 2, {}, (2, 1)),
    ("retrain", False, 4, {}, (4, 1)),
    ("transfer", False, 2, {}, (2, 1)),
    ("search", False, None, {}, (1, 1)),
    # Accelerators and plain CNNs keep TensorFlow's defaults.
    ("search", True, 16, {}, (0, 0)),
    ("retrain", True, 16, {}, (0, 0)),
    ("compress", False, 16, {}, (0, 0)),
    ("export", False, 16, {}, (0, 0)),
    # Flags win, each on its own (0 is TensorFlow's default).
    ("search", False, 16, {"inter_op_threads": 4}, (4, 1)),
    ("search", False, 16, {"intra_op_threads": 0}, (16, 0)),
    ("retrain", True, 8, {"inter_op_threads": 3, "intra_op_threads": 2}, (3, 2)),
])
def test_thread_counts(mode, accelerator, cpus, runtime, expected):
  assert threads.thread_counts(_config(mode, **runtime), accelerator, cpus) == expected


def test_after_start_only_explicit_changes_fail():
  tf.constant(1.0) + 1.0  # TensorFlow has started in this process.
  current = (tf.config.threading.get_inter_op_parallelism_threads(),
             tf.config.threading.get_intra_op_parallelism_threads())
  # A per-mode choice that cannot apply any more is left alone.
  assert threads.configure_threads(_config("search")) == threads.thread_counts(
      _config("search"), bool(tf.config.list_physical_devices("GPU")),
      os.cpu_count())
  # The same values as now are accepted.
  same = _config("compress", inter_op_threads=current[0],
                 intra_op_threads=current[1])
  assert threads.configure_threads(same) == current
  # A different explicit value is refused with the reason.
  other = dataclasses.replace(
      same, runtime=dataclasses.replace(same.runtime,
                                        inter_op_threads=current[0] + 3))
  with pytest.raises(ConfigError, match="--inter_op_threads=.* cannot take "
                     "effect: TensorFlow already started"):
    threads.configure_threads(other)
  assert tf.config.threading.get_inter_op_parallelism_threads() == current[0]


def test_pools_apply_in_a_fresh_process():
  # Before TensorFlow starts (the point of the process boundary), the
  # chosen pools take effect.
  code = (
      "import tensorflow as tf\n"
      "from bayesnas_tf import config as c\n"
      "from bayesnas_tf.runtime import threads\n"
      "threads.configure_threads(c.ExperimentConfig(mode='search', "
      "runtime=c.RuntimeConfig(inter_op_threads=3)))\n"
      "tf.constant(1.0) + 1.0\n"
      "print(tf.config.threading.get_inter_op_parallelism_threads(), "
      "tf.config.threading.get_intra_op_parallelism_threads(), "
      "len(tf.config.list_physical_devices('GPU')))\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], cwd=root,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  inter, intra, gpus = result.stdout.split()[-3:]
  assert (inter, intra) == ("3", "0" if int(gpus) else "1")


def test_grappler_is_off_without_an_accelerator():
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  accelerator = threads.has_accelerator()
  assert modes.configure_graph_optimizer() == (not accelerator)
  options = tf.config.optimizer.get_experimental_options()
  assert options.get("disable_meta_optimizer", False) == (not accelerator)


@pytest.mark.parametrize("jit", [False, True])
def test_jit_compile_without_an_accelerator_warns(jit, tmp_path, caplog):
  from bayesnas_tf import api  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  config = api.make_config("search", jit_compile=jit, model_dir=str(tmp_path))
  with caplog.at_level(logging.WARNING, logger="absl"):
    modes.prepare_runtime(config)
  warned = [r for r in caplog.records if "--jit_compile on a host" in r.getMessage()]
  assert len(warned) == int(jit and not threads.has_accelerator())
