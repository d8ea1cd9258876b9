"""Shared test helpers: the repository root, ../shared/data, running main.py."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
CIFAR_SUBSET = SHARED_DATA / "cifar10_subset.npz"
MNIST = SHARED_DATA / "mnist.npz"


# The files that take longest, longest first (measured with --durations).
# `--dist loadfile` runs each file on one worker in collection order; with
# the long files first, the short ones fill the end and both workers finish
# together (alphabetical order left the longest ones for last).
LONGEST_FIRST = ("test_scale_out.py", "test_search.py", "test_preemption.py",
                 "test_faults.py", "test_search_loop.py", "test_jit_recompute.py", "test_retrain.py",
                 "test_api.py", "test_study.py", "test_proxyless_search.py",
                 "test_hessian.py", "test_compress.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_configure(config):
  """In-process tests run TensorFlow as main.py does on this host.

  Every mode's prepare_runtime turns Grappler off on a host without an
  accelerator (modes.configure_graph_optimizer); tests that build networks
  and step functions in-process skip prepare_runtime, and would otherwise
  test (and pay for: about 2 s per traced function here) a graph
  optimiser that the command line does not run on this machine.
  """
  del config
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  modes.configure_graph_optimizer()

# A search small enough for CI: 3 cells (N R R), C = 4, 4 primitives, 600
# digits, two iterations so pruned gates are masked in a second round. Per
# iteration: 3 warm-up steps and 3 x 15 search steps of 32 examples.
TINY_SEARCH_FLAGS = (
    "--mode=search", "--dataset=digits", "--cells=3", "--channels=4",
    "--primitives=sep3,max,avg,id", "--batch_size=32",
    "--max_train_examples=600", "--max_eval_examples=100",
    "--warmup_fraction=0.2", "--warmup_epochs=1", "--search_epochs=3",
    "--iterations=2", "--lambda_child=0.1", "--learning_rate=0.05",
    "--arch_learning_rate=0.05", "--crop_padding=1", "--cutout=4",
    "--hessian_batches=2", "--checkpoint_every=4", "--noprogress",
)


def requires_shared_data(path: pathlib.Path):
  return pytest.mark.skipif(
      not path.exists(),
      reason=f"{path} not present (../shared/data is only on dev/CI machines)")


def run_main(*args, timeout=600, env=None):
  """Runs `python main.py ARGS` from the repository root."""
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                     PYTHONUNBUFFERED="1")
  environment.update(env or {})
  return subprocess.run(
      [sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
      capture_output=True, text=True, timeout=timeout, env=environment)


def start_main(*args, env=None):
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                     PYTHONUNBUFFERED="1")
  environment.update(env or {})
  return subprocess.Popen(
      [sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env=environment)


def serve_without_project(version_dir, images, work_dir) -> np.ndarray:
  """The probabilities a SavedModel's serving_default gives `images`, from a
  process that cannot import bayesnas_tf (what TF Serving has)."""
  work = pathlib.Path(work_dir)
  inputs, outputs = work / "serve_inputs.npy", work / "serve_outputs.npy"
  np.save(inputs, images)
  code = ("import sys; sys.modules['bayesnas_tf'] = None\n"
          "import numpy as np, tensorflow as tf\n"
          "m = tf.saved_model.load(sys.argv[1])\n"
          "out = m.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
          "np.save(sys.argv[3], out['probabilities'].numpy())\n")
  served = subprocess.run(
      [sys.executable, "-c", code, str(version_dir), str(inputs), str(outputs)],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert served.returncode == 0, served.stderr[-3000:]
  return np.load(outputs)


def posterior_gammas(model_dir) -> np.ndarray:
  """The gamma of every group in a finished search's posterior.json."""
  posterior = json.loads((pathlib.Path(model_dir) / "posterior.json").read_text())
  return np.array([g["gamma"] for g in posterior["groups"]])


def tree_digest(path) -> dict:
  """{relative path: sha256} of every file under `path`."""
  path = pathlib.Path(path)
  result = {}
  for file in sorted(p for p in path.rglob("*") if p.is_file()):
    result[str(file.relative_to(path))] = hashlib.sha256(
        file.read_bytes()).hexdigest()
  return result
