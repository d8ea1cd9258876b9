"""The command line: parameter counts, and bad input -> one clear line, a
non-zero exit, and nothing in --model_dir lost."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_SEARCH_FLAGS, run_main

QUICK_FLAGS = [f for f in TINY_SEARCH_FLAGS if not f.startswith(
    ("--max_train_examples", "--search_epochs", "--iterations", "--primitives",
     "--warmup_fraction"))]
QUICK_FLAGS += ["--max_train_examples=96", "--warmup_fraction=0.4", "--search_epochs=1", "--iterations=1",
                "--primitives=max,id"]


def _assert_clean_failure(result, pattern):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  # The message is the last line (absl's flag errors add a help hint after).
  last = "\n".join(result.stderr.strip().splitlines()[-2:])
  assert pattern in last, result.stderr[-2000:]
  return last


def test_console_script_is_declared_and_is_main_py(tmp_path):
  """`pip install .` gives the `bayesnas_tf` command: setup.py's entry
  point bayesnas_tf.cli:run, the program that main.py runs."""
  setup = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
               if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
  entry_points = next(ast.literal_eval(k.value) for k in setup.keywords
                      if k.arg == "entry_points")
  assert entry_points == {"console_scripts": ["bayesnas_tf = bayesnas_tf.cli:run"]}
  args = ("--mode=retrain", "--genotype=bayesnas_l0.01", "--summary_only")
  # From outside the checkout: the installed package alone.
  module = subprocess.run(
      [sys.executable, "-m", "bayesnas_tf.cli", *args], cwd=tmp_path, timeout=300,
      capture_output=True, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  script = run_main(*args)
  assert module.returncode == script.returncode == 0, module.stderr[-2000:]
  assert module.stdout == script.stdout == "trainable_params: 2575702\n"


def test_summary_only_paper_supernet():
  result = run_main("--flagfile=flags/search_cifar10.flags", "--summary_only")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines() == ["trainable_params: 26911350", "gates: 512"]


@pytest.mark.parametrize("args, message", [
    ((), "Flag --mode must have a value"),
    (("--mode=foo",), "value should be one of"),
    (("--mode=search", "--lambda_child=0"), "--lambda_child must be > 0"),
    (("--mode=search", "--lambda_child=-0.01"), "--lambda_child must be > 0"),
    (("--mode=search", "--primitives=sep3,foo"), "unknown primitive(s) foo"),
    (("--mode=search", "--cells=2"), "--cells must be at least 3"),
    (("--mode=search", "--search_space=nas"), "unknown search space 'nas'"),
    (("--mode=search", "--dataset=nosuch"), "unknown --dataset 'nosuch'"),
    (("--mode=search", "--dataset=npz:/no/such/file.npz"), "does not exist"),
    (("--mode=transfer", "--genotype=bayesnas_l0.01", "--dataset=folder:/no/such/dir"),
     "image folder '/no/such/dir' does not exist"),
    (("--mode=search", "--intra_op_threads=-1"), "--intra_op_threads must be >= 0"),
])
def test_bad_flags(tmp_path, args, message):
  model_dir = tmp_path / "run"
  result = run_main(*args, f"--model_dir={model_dir}")
  _assert_clean_failure(result, message)
  assert not model_dir.exists()


def test_tfds_offline_says_what_to_pass(tmp_path):
  result = run_main("--mode=search", "--dataset=cifar10",
                    f"--data_dir={tmp_path / 'tfds'}",
                    f"--model_dir={tmp_path / 'run'}")
  last = _assert_clean_failure(result, "could not load TFDS dataset 'cifar10'")
  assert "--download" in last and "npz:PATH" in last


# Another configuration in a finished run's --model_dir: test_search.py.


def test_nan_loss_stops_with_a_message_and_keeps_checkpoints(tmp_path):
  model_dir = tmp_path / "run"
  result = run_main(*QUICK_FLAGS, "--learning_rate=1e30",
                    f"--model_dir={model_dir}")
  last = _assert_clean_failure(result, "the loss became")
  assert "lower --learning_rate" in last
  assert (model_dir / "config.json").exists()
  assert not (model_dir / "genotype.json").exists()
