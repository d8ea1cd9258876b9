"""--mode=retrain / transfer / export: training, resume, SavedModel serving."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bayesnas_tf import api
from bayesnas_tf import modes
from bayesnas_tf.errors import OUTPUT_WRITE_EXIT_CODE
from bayesnas_tf.spaces.dag.genotype import Genotype
from conftest import CIFAR_SUBSET, SHARED_DATA, TINY_SEARCH_FLAGS
from conftest import requires_shared_data, run_main, start_main, tree_digest

CIFAR_FOLDER = SHARED_DATA / "cifar10_folder"
# Small enough for CI: 3 cells (N R R), C = 8, 600 digits.
RETRAIN_FLAGS = (
    "--mode=retrain", "--genotype=bayesnas_l0.01", "--dataset=digits",
    "--cells=3", "--channels=8", "--epochs=3", "--batch_size=32",
    "--max_train_examples=600", "--crop_padding=1", "--cutout=4",
    "--learning_rate=0.05", "--checkpoint_every=5", "--noprogress",
)


def _serve_without_bayesnas(export_path, images_path):
  """Loads the SavedModel in a process that cannot import bayesnas_tf."""
  code = (
      "import sys; sys.modules['bayesnas_tf'] = None\n"
      "import numpy as np, tensorflow as tf\n"
      f"m = tf.saved_model.load({str(export_path)!r})\n"
      f"x = np.load({str(images_path)!r})\n"
      "out = m.signatures['serving_default'](images=tf.constant(x))\n"
      "np.save(sys.argv[1], out['probabilities'].numpy())\n"
      "try:\n"
      "  m.signatures['serving_default'](images=tf.constant(x, tf.float32))\n"
      "  print('float32 accepted')\n"
      "except Exception as e:\n"
      "  print('float32 rejected:', type(e).__name__)\n")
  out = pathlib.Path(images_path).with_suffix(".probs.npy")
  result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-3000:]
  return np.load(out), result.stdout


def _keras_probabilities(model_dir, images):
  """The trained Keras model's predictions, rebuilt from the run directory."""
  import tensorflow as tf
  from bayesnas_tf import modes
  from bayesnas_tf.runtime import run_dir
  from bayesnas_tf.runtime.checkpointing import restore_latest, variables_by_path
  config = run_dir.read_config(str(model_dir))
  meta = json.loads((model_dir / "dataset.json").read_text())
  genotype = Genotype.load(model_dir / "genotype.json")
  model = modes.build_child_network(config, genotype, len(meta["class_names"]),
                                    meta["image_shape"])
  checkpoint = tf.train.Checkpoint(model=variables_by_path(model))
  manager = tf.train.CheckpointManager(checkpoint, str(model_dir / "checkpoints"), 1)
  assert restore_latest(checkpoint, manager)
  x = (images.astype(np.float32) / 255.0 - meta["mean"]) / meta["std"]
  return tf.nn.softmax(model(x, training=False)).numpy()


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
  base = tmp_path_factory.mktemp("retrain")
  model_dir, export_dir = base / "run", base / "exports"
  result = run_main(*RETRAIN_FLAGS, f"--model_dir={model_dir}",
                    f"--export_dir={export_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, export_dir


def test_summary_only_parameter_counts():
  # The released cells' counts (ALGORITHM.md 6); the command line once, the
  # others through the same summary function in this process.
  result = run_main("--mode=retrain", "--genotype=bayesnas_l0.01", "--summary_only")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "trainable_params: 2575702"
  for mode, genotype, expected in (
      ("retrain", "bayesnas_l0.007", 3197350),
      ("retrain", "bayesnas_l0.005", 2512198),
      ("transfer", "bayesnas_imagenet", 4008928)):
    config = api.make_config(mode, genotype=genotype)
    assert modes.summary(config) == {"trainable_params": expected}


def test_retrain_trains_and_exports(retrained):
  model_dir, export_dir = retrained
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["epochs"] == 3 and metrics["examples"] == 359
  assert metrics["accuracy"] > 0.2       # chance is 0.1
  for name in ("config.json", "flags.txt", "genotype.json", "dataset.json"):
    assert (model_dir / name).is_file()
  version = export_dir / "bayesnas_l0.01" / "1"
  assert (version / "saved_model.pb").is_file()
  assert (version / "assets" / "class_names.txt").read_text().split() == [
      str(i) for i in range(10)]
  assert Genotype.from_json((version / "assets" / "genotype.json").read_text()) == (
      Genotype.load(model_dir / "genotype.json"))


def test_export_serves_without_bayesnas_and_matches_keras(retrained, tmp_path):
  model_dir, export_dir = retrained
  from bayesnas_tf.data import arrays as data_lib
  images = data_lib.load_dataset("digits").x_test[:16]
  np.save(tmp_path / "images.npy", images)
  served, stdout = _serve_without_bayesnas(export_dir / "bayesnas_l0.01" / "1",
                                           tmp_path / "images.npy")
  np.testing.assert_allclose(served, _keras_probabilities(model_dir, images),
                             rtol=1e-4, atol=1e-5)
  assert "float32 rejected" in stdout


def test_saved_model_cli_show_and_run(retrained, tmp_path):
  _, export_dir = retrained
  version = export_dir / "bayesnas_l0.01" / "1"
  cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  show = subprocess.run([str(cli), "show", "--dir", str(version), "--tag_set",
                         "serve", "--signature_def", "serving_default"],
                        capture_output=True, text=True, env=env, timeout=300)
  assert show.returncode == 0, show.stderr[-2000:]
  assert "DT_UINT8" in show.stdout and "(-1, 8, 8, 1)" in show.stdout
  assert "outputs['classes']" in show.stdout
  from bayesnas_tf.data import arrays as data_lib
  images = data_lib.load_dataset("digits").x_test[:8]
  np.save(tmp_path / "x.npy", images)
  run = subprocess.run([str(cli), "run", "--dir", str(version), "--tag_set", "serve",
                        "--signature_def", "serving_default", "--inputs",
                        f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  classes = np.load(tmp_path / "out" / "classes.npy")
  served, _ = _serve_without_bayesnas(version, tmp_path / "x.npy")
  np.testing.assert_array_equal(classes, served.argmax(-1))


def test_export_mode_adds_a_version_and_never_overwrites(retrained):
  model_dir, export_dir = retrained
  before = tree_digest(export_dir / "bayesnas_l0.01" / "1")
  result = run_main("--mode=export", f"--model_dir={model_dir}",
                    f"--export_dir={export_dir}")
  assert result.returncode == 0, result.stderr[-2000:]
  # The export reads the weights and leaves the optimizer's state unread,
  # without a warning for each slot it did not want.
  assert "could not be found in the restored object" not in result.stderr
  assert sorted(os.listdir(export_dir / "bayesnas_l0.01")) == ["1", "2"]
  assert tree_digest(export_dir / "bayesnas_l0.01" / "1") == before


def test_export_dir_not_writable(retrained, tmp_path):
  model_dir, _ = retrained
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = run_main("--mode=export", f"--model_dir={model_dir}",
                    f"--export_dir={blocker / 'models'}")
  assert result.returncode == OUTPUT_WRITE_EXIT_CODE, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: cannot write --export_dir={blocker / 'models'}: Not a directory; "
      "pass a writable --export_dir or --export=false")


@pytest.mark.parametrize("genotype, message", [
    ("no/such/genotype.json", "does not exist"),
    ("MALFORMED", "line 1"),
    ("UNKNOWN_OP", "zero"),
    ("BAD_INPUT", "n3"),
])
def test_bad_genotypes(tmp_path, genotype, message):
  if genotype == "MALFORMED":
    (tmp_path / "g.json").write_text("{not json")
    genotype = str(tmp_path / "g.json")
  elif genotype in ("UNKNOWN_OP", "BAD_INPUT"):
    from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
    values = KNOWN_GENOTYPES["bayesnas_l0.01"].to_dict()
    if genotype == "UNKNOWN_OP":
      values["normal"]["n0"][0][0] = "zero"
    else:
      values["normal"]["n1"][0][1] = "n3"
    (tmp_path / "g.json").write_text(json.dumps(values))
    genotype = str(tmp_path / "g.json")
  result = run_main("--mode=retrain", f"--genotype={genotype}", "--dataset=digits",
                    f"--model_dir={tmp_path / 'run'}")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert message in result.stderr.strip().splitlines()[-1], result.stderr[-1500:]
  assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_genotype_is_refused(retrained, tmp_path):
  model_dir, _ = retrained
  before = tree_digest(model_dir)
  result = run_main(*[f for f in RETRAIN_FLAGS if not f.startswith("--genotype")],
                    "--genotype=bayesnas_l0.007", f"--model_dir={model_dir}",
                    "--export=false")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "genotype" in result.stderr.strip().splitlines()[-1]
  assert tree_digest(model_dir) == before


def _latest_checkpoint(model_dir):
  index = pathlib.Path(model_dir) / "checkpoints" / "checkpoint"
  if not index.exists():
    return -1
  return int(index.read_text().splitlines()[0].rsplit("ckpt-", 1)[1].rstrip('"'))


def test_killed_retrain_resumes_to_the_same_weights(retrained, tmp_path):
  reference, _ = retrained
  model_dir = tmp_path / "killed"
  flags = (*RETRAIN_FLAGS, f"--model_dir={model_dir}", "--export=false")
  process = start_main(*flags)
  deadline = time.time() + 600
  # 18 steps per epoch; kill after the step-5 or step-10 checkpoint of epoch 1.
  while _latest_checkpoint(model_dir) < 5:
    assert process.poll() is None, process.stderr.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert 5 <= _latest_checkpoint(model_dir) < 18
  result = run_main(*flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from" in result.stderr
  got = json.loads((model_dir / "metrics.json").read_text())
  want = json.loads((reference / "metrics.json").read_text())
  assert got["accuracy"] == want["accuracy"]
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_diag_backprop_search_then_retrain_then_export(tmp_path):
  # The whole pipeline from the command line, with the paper's own Hessian
  # estimator (--hessian=diag_backprop, App. C) in the search. One
  # iteration, no warm-up (its step function is the slow part to trace).
  search_dir = tmp_path / "search"
  flags = [f for f in TINY_SEARCH_FLAGS if not f.startswith(
      ("--iterations", "--search_epochs", "--warmup_epochs", "--max_train_examples",
       "--primitives", "--hessian_batches"))]
  result = run_main(*flags, "--iterations=1", "--search_epochs=1",
                    "--max_train_examples=160", "--primitives=sep3,max",
                    "--hessian_batches=1", "--warmup_epochs=0",
                    "--hessian=diag_backprop", f"--model_dir={search_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  found = Genotype.load(search_dir / "genotype.json")
  assert found.search["hessian"] == "diag_backprop"
  posterior = json.loads((search_dir / "posterior.json").read_text())
  hessians = np.array([h for g in posterior["groups"] for h in g["H"]])
  assert np.all(np.isfinite(hessians)) and np.all(hessians >= 0)
  assert hessians.max() > 0
  retrain_dir, export_dir = tmp_path / "retrain", tmp_path / "exports"
  flags = [f for f in RETRAIN_FLAGS if not f.startswith(("--genotype", "--epochs"))]
  result = run_main(*flags, f"--genotype={search_dir}", "--epochs=1",
                    f"--model_dir={retrain_dir}", f"--export_dir={export_dir}",
                    "--model_name=searched")
  assert result.returncode == 0, result.stderr[-3000:]
  assert Genotype.load(retrain_dir / "genotype.json") == found
  assert (export_dir / "searched" / "1" / "saved_model.pb").is_file()


@requires_shared_data(CIFAR_FOLDER)
def test_transfer_on_an_image_folder_with_warm_start(retrained, tmp_path):
  model_dir, _ = retrained
  export_dir = tmp_path / "exports"
  result = run_main(
      "--mode=transfer", "--genotype=bayesnas_l0.01",
      f"--dataset=folder:{CIFAR_FOLDER}", "--image_size=64", "--cells=3",
      "--channels=8", "--epochs=1", "--batch_size=32", "--noprogress",
      f"--warm_start={model_dir}", f"--model_dir={tmp_path / 'run'}",
      f"--export_dir={export_dir}", "--model_name=transfer")
  assert result.returncode == 0, result.stderr[-3000:]
  copied = int(result.stderr.split("warm start: ")[1].split()[0])
  assert copied > 20
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["examples"] == 500 and "top5" in metrics
  meta = json.loads((tmp_path / "run" / "dataset.json").read_text())
  assert meta["image_shape"] == [64, 64, 3]
  assert (export_dir / "transfer" / "1" / "saved_model.pb").is_file()


def test_imagenet_not_prepared_says_how(tmp_path):
  result = run_main("--mode=transfer", "--dataset=imagenet2012",
                    f"--data_dir={tmp_path / 'tfds'}", f"--model_dir={tmp_path / 'run'}",
                    "--export=false")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert "manual download" in last and "folder:PATH" in last


@requires_shared_data(CIFAR_SUBSET)
def test_retrain_on_the_cifar10_subset(tmp_path):
  flags = [f for f in RETRAIN_FLAGS if not f.startswith(
      ("--dataset", "--crop_padding", "--cutout", "--epochs", "--max_train"))]
  result = run_main(*flags, f"--dataset=npz:{CIFAR_SUBSET}", "--epochs=1",
                    "--max_train_examples=640", "--max_eval_examples=200",
                    f"--model_dir={tmp_path / 'run'}", "--export=false")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["examples"] == 200
