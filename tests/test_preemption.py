"""SIGTERM (a cloud scheduler's preemption notice) during a run: the current
step ends, a checkpoint is written, one line is printed and the process
exits with 42; the same command resumes and ends as an uninterrupted run.

The signal is sent once the run has loaded its data, before its first step,
so the first safe point (after step 1 of a 2-step epoch) is where it stops:
mid-epoch, whatever the speed of the machine. An uninterrupted run of the
same flags runs alongside as the reference.
"""

import json
import pathlib

import numpy as np
import pytest

from bayesnas_tf.errors import PREEMPTED_EXIT_CODE
from bayesnas_tf.genotype import Genotype
from scale_out_util import ProcessGroup

# Warm-up: 2 steps of 32; search: 2 steps; no periodic checkpoint, so
# ckpt-1 can only be the preemption's.
SEARCH_FLAGS = (
    "--mode=search", "--dataset=digits", "--cells=3", "--channels=4",
    "--primitives=max,id", "--batch_size=32", "--max_train_examples=128",
    "--max_eval_examples=64", "--warmup_fraction=0.5", "--warmup_epochs=1",
    "--search_epochs=1", "--iterations=1", "--lambda_child=0.1",
    "--learning_rate=0.05", "--arch_learning_rate=0.05", "--crop_padding=1",
    "--cutout=4", "--hessian_batches=1", "--checkpoint_every=100", "--noprogress",
)
RETRAIN_FLAGS = (
    "--mode=retrain", "--genotype=bayesnas_l0.01", "--dataset=digits",
    "--cells=3", "--channels=4", "--epochs=1", "--batch_size=32",
    "--max_train_examples=64", "--max_eval_examples=50", "--crop_padding=1",
    "--cutout=4", "--learning_rate=0.05", "--checkpoint_every=100",
    "--noprogress", "--export=false",
)


@pytest.fixture
def group(tmp_path):
  processes = ProcessGroup(tmp_path)
  yield processes
  processes.kill_all()


def _checkpoints(model_dir):
  return sorted(int(p.name[len("ckpt-"):-len(".index")])
                for p in (pathlib.Path(model_dir) / "checkpoints").glob("ckpt-*.index"))


def _preempt_then_resume(group, flags, model_dir, reference_dir):
  group.start("reference", *flags, f"--model_dir={reference_dir}")
  group.start("preempted", *flags, f"--model_dir={model_dir}")
  group.wait_for_text("preempted", "Loaded dataset")
  group.sigterm("preempted")
  assert group.wait("preempted") == [PREEMPTED_EXIT_CODE], group.log("preempted")[-3000:]
  last = group.last_line("preempted")
  assert "Traceback" not in group.log("preempted")
  assert _checkpoints(model_dir) == [1]            # after step 1, nothing else
  group.start("resumed", *flags, f"--model_dir={model_dir}")
  assert group.wait("resumed", "reference") == [0, 0], group.log("resumed")[-3000:]
  assert "resumed from" in group.log("resumed")
  return last


def test_sigterm_mid_epoch_search_resumes_to_the_same_genotype(group, tmp_path):
  model_dir, reference = tmp_path / "run", tmp_path / "reference"
  last = _preempt_then_resume(group, SEARCH_FLAGS, model_dir, reference)
  assert last == ("preempted: SIGTERM: stopped after iteration 1, warmup phase, "
                  "step 1 and saved a checkpoint; run the same command to resume")
  assert Genotype.load(model_dir / "genotype.json") == Genotype.load(
      reference / "genotype.json")
  gammas = [np.array([g["gamma"] for g in json.loads(
      (d / "posterior.json").read_text())["groups"]]) for d in (model_dir, reference)]
  np.testing.assert_allclose(gammas[0], gammas[1], rtol=1e-6)


def test_sigterm_mid_epoch_retrain_resumes_to_the_same_model(group, tmp_path):
  model_dir, reference = tmp_path / "run", tmp_path / "reference"
  last = _preempt_then_resume(group, RETRAIN_FLAGS, model_dir, reference)
  assert last.startswith("preempted: SIGTERM: stopped after epoch 1, step 1 and")
  got, want = (json.loads((d / "metrics.json").read_text()) for d in (model_dir, reference))
  assert got["accuracy"] == want["accuracy"]
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
