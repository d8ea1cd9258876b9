"""SIGTERM (a cloud scheduler's preemption notice) during a run: the current
step ends, a checkpoint is written, one line is printed and the process
exits with 42; the same command resumes and ends as an uninterrupted run.
A search killed outright (SIGKILL) in its warm-up, joint phase and update
takes over the lock the killed run left, resumes from its last periodic
checkpoint and ends the same way.
(Retrain/transfer: test_scale_out.py preempts its one-process reference.)

The signal is sent once the run has loaded its data, before its first step,
so the first safe point (after step 1 of a 2-step epoch) is where it stops:
mid-epoch, whatever the speed of the machine. An uninterrupted run of the
same flags runs alongside as the reference.
"""

import json
import pathlib
import signal
import time

import numpy as np
import pytest

from bayesnas_tf.errors import PREEMPTED_EXIT_CODE
from bayesnas_tf.spaces.dag.genotype import Genotype
from conftest import posterior_gammas
from scale_out_util import ProcessGroup, worker_hosts

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


@pytest.fixture
def group(tmp_path):
  processes = ProcessGroup(tmp_path)
  yield processes
  processes.kill_all()


def _checkpoints(directory):
  return sorted(int(p.name[len("ckpt-"):-len(".index")])
                for p in pathlib.Path(directory).glob("ckpt-*.index"))


def _preempt_then_resume(group, flags, model_dir, reference_dir):
  group.start("reference", *flags, f"--model_dir={reference_dir}")
  group.start("preempted", *flags, f"--model_dir={model_dir}")
  group.wait_for_text("preempted", "Loaded dataset")
  group.sigterm("preempted")
  assert group.wait("preempted") == [PREEMPTED_EXIT_CODE], group.log("preempted")[-3000:]
  last = group.last_line("preempted")
  assert "Traceback" not in group.log("preempted")
  assert _checkpoints(model_dir / "checkpoints") == [1]  # after step 1 only
  assert not (model_dir / ".lock").exists()   # given back on the way out
  group.start("resumed", *flags, f"--model_dir={model_dir}")
  assert group.wait("resumed", "reference") == [0, 0], group.log("resumed")[-3000:]
  assert "resumed from" in group.log("resumed")
  return last


def _latest_checkpoint_number(model_dir):
  """The number in the checkpoint state file (written after the files)."""
  index = pathlib.Path(model_dir) / "checkpoints" / "checkpoint"
  if not index.exists():
    return -1
  first = index.read_text().splitlines()[0]
  return int(first.rsplit("ckpt-", 1)[1].rstrip('"'))


def test_sigterm_or_sigkill_mid_search_resumes_to_the_same_genotype(group, tmp_path):
  model_dir, reference = tmp_path / "run", tmp_path / "reference"
  last = _preempt_then_resume(group, SEARCH_FLAGS, model_dir, reference)
  assert last == ("preempted: SIGTERM: stopped after iteration 1, warmup phase, "
                  "step 1 and saved a checkpoint; run the same command to resume")
  assert Genotype.load(model_dir / "genotype.json") == Genotype.load(
      reference / "genotype.json")
  np.testing.assert_allclose(posterior_gammas(model_dir), posterior_gammas(reference),
                             rtol=1e-6)

  # SIGKILL leaves no time to save (and leaves the run's lock behind): the
  # same command takes the lock over and resumes from the last periodic
  # checkpoint. A checkpoint after every step (not part of the run's
  # configuration, so the reference still applies): warm-up steps are global
  # steps 1-2, the joint phase 3-4, then the update. Killed three times: in
  # the warm-up (ckpt-1 or -2), in the joint phase (ckpt-3 or -4), and in
  # the update (tracing its Hessian), each resumed by the next start.
  killed = tmp_path / "killed"
  flags = [f for f in SEARCH_FLAGS if not f.startswith("--checkpoint_every")]
  flags += ["--checkpoint_every=1", f"--model_dir={killed}"]
  points = (("warmup", lambda: _latest_checkpoint_number(killed) >= 1, (1, 2)),
            ("joint", lambda: _latest_checkpoint_number(killed) >= 3, (3, 4)),
            ("update", lambda: "update phase: ggn Hessian" in group.log("update"),
             (4,)))
  for index, (name, reached, expected) in enumerate(points):
    process = group.start(name, *flags)
    deadline = time.time() + 600
    while not reached():
      assert process.poll() is None, group.log(name)[-3000:]
      assert time.time() < deadline, f"the run did not reach the {name} in time"
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _latest_checkpoint_number(killed) in expected, name
    assert not (killed / "genotype.json").exists()
    assert (killed / ".lock").exists()
    if index:
      log = group.log(name)
      assert "taking over the lock of a run that is gone" in log, log[-3000:]
      assert "resumed from" in log
  group.start("killed_resumed", *flags)
  assert group.wait("killed_resumed") == [0], group.log("killed_resumed")[-3000:]
  assert "resumed from" in group.log("killed_resumed")
  assert Genotype.load(killed / "genotype.json") == Genotype.load(
      reference / "genotype.json")
  np.testing.assert_allclose(posterior_gammas(killed), posterior_gammas(reference),
                             rtol=1e-6)
  assert not (killed / ".lock").exists()


def _user_cnn(path):
  """A small user model with batch norm (pretraining is skipped)."""
  import keras
  keras.utils.set_random_seed(0)
  keras.Sequential([
      keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, padding="same", name="c1"),
      keras.layers.BatchNormalization(name="b1"), keras.layers.ReLU(name="r1"),
      keras.layers.MaxPooling2D(2, name="p1"), keras.layers.Flatten(name="f"),
      keras.layers.Dense(12, activation="relu", name="h"),
      keras.layers.Dense(10, name="out")], name="user_cnn").save(path)


def test_compress_preempted_twice_and_two_workers_match_one_process(group, tmp_path):
  # One run stops mid-epoch in round 1 and again in fine-tuning (both at
  # step 1: the signal comes while the epoch's first step is traced) and is
  # resumed; two workers (global-batch statistics in the model's Keras
  # BatchNormalization) run through. Both end with the report of one
  # uninterrupted process.
  _user_cnn(tmp_path / "user_cnn.keras")
  flags = ("--mode=compress", "--dataset=digits", "--batch_size=32",
           "--max_train_examples=128", "--iterations=1", "--epochs_per_iteration=1",
           "--finetune_epochs=1", "--learning_rate=0.05", "--lambda_group=0.01",
           "--hessian_batches=1", "--prune_threshold=0.05", "--noprogress",
           "--export=false", f"--base_model={tmp_path / 'user_cnn.keras'}")
  reference, model_dir, cluster_dir = (tmp_path / name for name in ("reference", "run", "cluster"))
  hosts = worker_hosts(2)
  for index in range(2):
    group.start(f"w{index}", *flags, f"--model_dir={cluster_dir}",
                "--strategy=multi_worker_mirrored", f"--worker_hosts={hosts}",
                f"--task_index={index}")
  group.start("reference", *flags, f"--model_dir={reference}")
  for name, phase in (("round", "round1"), ("finetune", "finetune")):
    group.start(name, *flags, f"--model_dir={model_dir}")
    group.wait_for_text(name, f"{phase} epoch 1/1")
    group.sigterm(name)
    assert group.wait(name) == [PREEMPTED_EXIT_CODE], group.log(name)[-3000:]
    assert group.last_line(name).startswith(
        f"preempted: SIGTERM: stopped after {phase} epoch 1, step 1 and saved")
  assert _checkpoints(model_dir / "checkpoints" / "finetune") == [5]
  group.start("resumed", *flags, f"--model_dir={model_dir}")
  assert group.wait("resumed", "reference", "w0", "w1") == [0, 0, 0, 0], (
      group.log("resumed")[-3000:] + group.log("w0")[-3000:])
  assert "resumed fine-tuning at epoch 1, step 1" in group.log("resumed")
  want = json.loads((reference / "compression.json").read_text())
  for run in (model_dir, cluster_dir):
    got = json.loads((run / "compression.json").read_text())
    for key in ("params_after", "flops_after", "accuracy_before", "accuracy_pruned",
                "accuracy_finetuned", "layers"):
      assert got[key] == want[key], (run, key)
    assert got["rounds"][0]["kept_units"] == want["rounds"][0]["kept_units"]
    for name, median in want["rounds"][0]["gamma_median"].items():
      assert got["rounds"][0]["gamma_median"][name] == pytest.approx(median, rel=1e-5)
