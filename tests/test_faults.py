"""The faults users meet (issue 18), each with its outcome and nothing lost:
a damaged checkpoint, a failed write (a full disk), two runs on one
model_dir. (kill -9 at several points of a search: test_preemption.py; the
strided 1x1 convs that crashed TensorFlow: test_fast_conv.py.)

Most cases run in this process through the Python API, with the failure
injected by monkeypatching the writer; a child process only where the
process boundary is the point: the one line and the exit code of a real
full disk, and a second process on a locked model_dir.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import api
from bayesnas_tf import io_utils
from bayesnas_tf.errors import OUTPUT_WRITE_EXIT_CODE
from bayesnas_tf.errors import RESUME_HINT
from bayesnas_tf.errors import CheckpointUnreadableError
from bayesnas_tf.errors import ModelDirInUseError
from bayesnas_tf.errors import OutputWriteError
from bayesnas_tf.runtime import checkpointing
from bayesnas_tf.runtime import run_lock
from bayesnas_tf.spaces.dag.genotype import Genotype
from conftest import ROOT, posterior_gammas, run_main, tree_digest

# A search of a few seconds that prunes part of the normal cell: 2 warm-up
# and 2 joint steps, one update (ggn_mc: the Hessian that traces fastest),
# a checkpoint after every step (ckpt-1 .. ckpt-4; the update's end saves
# ckpt-4 again, as finished).
SEARCH = dict(
    dataset="digits", cells=3, channels=4, primitives=["max", "id"],
    batch_size=32, max_train_examples=128, max_eval_examples=64,
    warmup_fraction=0.5, warmup_epochs=1, search_epochs=1, iterations=1,
    lambda_child=0.5, learning_rate=0.05, arch_learning_rate=0.5,
    crop_padding=1, cutout=4, hessian="ggn_mc", hessian_batches=1,
    prune_threshold=0.137, checkpoint_every=1, keep_checkpoints=3, progress=False)
SEARCH_FLAGS = ("--mode=search",) + tuple(
    f"--{k}={','.join(v) if isinstance(v, list) else v}" if not isinstance(v, bool)
    else (f"--{k}" if v else f"--no{k}") for k, v in SEARCH.items())
NO_SPACE = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted search: what every interrupted one must end with."""
  model_dir = tmp_path_factory.mktemp("faults") / "reference"
  result = api.search(model_dir=str(model_dir), **SEARCH)
  # The genotype says something: the update pruned some ops, not all.
  assert 0 < sum(c["kept"] for c in result.ops.values()) < sum(
      c["total"] for c in result.ops.values())
  return model_dir


def _copy(run, tmp_path, name="run"):
  target = tmp_path / name
  shutil.copytree(run, target)
  return target


def _assert_same_search(model_dir, reference_dir):
  assert Genotype.load(model_dir / "genotype.json") == Genotype.load(
      reference_dir / "genotype.json")
  np.testing.assert_allclose(posterior_gammas(model_dir),
                             posterior_gammas(reference_dir), rtol=1e-6)


def _leftovers(model_dir):
  """What a failed or killed write may leave and a later run trip over."""
  model_dir = pathlib.Path(model_dir)
  return sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if (
      p.name.startswith(io_utils.TEMP_PREFIX) or p.name.endswith("_temp")
      or p.name.startswith(run_lock.LOCK_FILE)
      or p.name.startswith("checkpoint.tmp") or p.name.startswith(".export_")))


def _random_bytes(count=100, seed=0):
  return np.random.default_rng(seed).bytes(count)


def _messages(caplog, text):
  return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- checked restore ------------------------------------------------------------
def _small_checkpoints(directory, count=3):
  """ckpt-1..count of one variable holding 1, 2, ... (checkpointing.save)."""
  variable = tf.Variable(np.zeros(1000, np.float32))
  checkpoint = tf.train.Checkpoint(v=variable)
  manager = checkpointing.make_manager(checkpoint, str(directory), count)
  for number in range(1, count + 1):
    variable.assign(np.full(1000, number, np.float32))
    checkpointing.save(manager, number)
  variable.assign(np.zeros(1000, np.float32))
  return variable, checkpoint, manager


@pytest.mark.parametrize("damage, reason", [
    ("data_replaced", "Read less bytes than requested"),
    ("data_overwritten", "Checksum does not match"),
    ("index_overwritten", "not an sstable"),
    ("index_missing", "its .index file is missing"),
])
def test_a_damaged_newest_checkpoint_is_skipped_with_one_warning(
    tmp_path, caplog, damage, reason):
  directory = tmp_path / "checkpoints"
  variable, checkpoint, manager = _small_checkpoints(directory)
  data, index = directory / "ckpt-3.data-00000-of-00001", directory / "ckpt-3.index"
  if damage == "data_replaced":        # a copy cut short
    data.write_bytes(_random_bytes())
  elif damage == "data_overwritten":   # a bad sector: same size
    data.write_bytes(_random_bytes() + data.read_bytes()[100:])
  elif damage == "index_overwritten":
    index.write_bytes(_random_bytes())
  else:
    index.unlink()
  with caplog.at_level(logging.WARNING):
    restored = checkpointing.restore_latest(checkpoint, manager)
  assert restored == str(directory / "ckpt-2")
  np.testing.assert_array_equal(variable.numpy(), np.full(1000, 2, np.float32))
  warnings = _messages(caplog, "cannot be read")
  assert len(warnings) == 1 and warnings[0].startswith(
      f"checkpoint {directory / 'ckpt-3'} cannot be read (")
  assert reason in warnings[0] and warnings[0].endswith("resuming from the older ckpt-2")


def test_checkpoints_are_found_without_their_state_file(tmp_path, caplog):
  directory = tmp_path / "checkpoints"
  variable, checkpoint, _ = _small_checkpoints(directory)
  (directory / "checkpoint").write_bytes(b"model_checkpoint_path: \"ckpt-\xff")
  with caplog.at_level(logging.WARNING):
    manager = checkpointing.make_manager(checkpoint, str(directory), 3)
  assert _messages(caplog, "is damaged") == [
      f"checkpoint state file {directory / 'checkpoint'} is damaged; moved it to "
      f"{directory / 'checkpoint.damaged'} and looking for the checkpoints themselves"]
  assert checkpointing.restore_latest(checkpoint, manager) == str(directory / "ckpt-3")
  np.testing.assert_array_equal(variable.numpy(), np.full(1000, 3, np.float32))


def test_the_newest_checkpoint_is_the_latest_written_not_the_highest_number(tmp_path):
  # Compress saves ckpt-<global step> inside its pretraining, then ckpt-0
  # at its end: ckpt-0 holds the later state.
  variable = tf.Variable(0.0)
  checkpoint = tf.train.Checkpoint(v=variable)
  manager = checkpointing.make_manager(checkpoint, str(tmp_path), 2)
  for number, value in ((5, 5.0), (0, 0.5)):
    variable.assign(value)
    checkpointing.save(manager, number)
  variable.assign(-1.0)
  assert checkpointing.restore_latest(checkpoint, manager) == str(tmp_path / "ckpt-0")
  assert float(variable.numpy()) == 0.5


def test_no_readable_checkpoint_is_one_error_naming_the_folder(tmp_path):
  directory = tmp_path / "checkpoints"
  variable, checkpoint, manager = _small_checkpoints(directory, 2)
  for data in directory.glob("*.data-*"):
    data.write_bytes(_random_bytes())
  with pytest.raises(CheckpointUnreadableError) as error:
    checkpointing.restore_latest(checkpoint, manager)
  assert str(error.value) == (
      f"none of the 2 checkpoints in {directory} can be read (ckpt-2: Read less "
      "bytes than requested; ckpt-1: Read less bytes than requested); to start "
      "over from scratch, move that folder away (or delete it) and run the same "
      "command again")
  assert error.value.exit_code == 1
  # Nothing was assigned from a half-read file.
  np.testing.assert_array_equal(variable.numpy(), np.zeros(1000, np.float32))


@pytest.fixture
def file_size_limit():
  """Sets RLIMIT_FSIZE for the block: a write past it fails with EFBIG
  ("File too large"; CPython ignores SIGXFSZ), a real failure of the
  operating system that needs no root and no mount."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

  def limit(size):
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

  yield limit
  resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_checkpoint_save_that_fails_leaves_the_previous_ones(tmp_path,
                                                                file_size_limit):
  directory = tmp_path / "checkpoints"
  variable = tf.Variable(np.ones(100_000, np.float32))   # 400 kB
  checkpoint = tf.train.Checkpoint(v=variable)
  manager = checkpointing.make_manager(checkpoint, str(directory), 2)
  checkpointing.save(manager, 1)
  before = tree_digest(directory)
  file_size_limit(100_000)
  with pytest.raises(OutputWriteError) as error:
    checkpointing.save(manager, 2)
  file_size_limit(resource.RLIM_INFINITY)
  assert str(error.value) == (f"cannot write {directory / 'ckpt-2'}: "
                              f"{os.strerror(errno.EFBIG)}; {RESUME_HINT}")
  assert error.value.exit_code == OUTPUT_WRITE_EXIT_CODE
  # TensorFlow's ckpt-2_temp/ and any part of ckpt-2 are gone; ckpt-1 and
  # the state file naming it are as they were.
  assert tree_digest(directory) == before
  assert checkpointing.newest_readable(str(directory)) == str(directory / "ckpt-1")


def test_a_new_manager_removes_what_a_killed_save_left(tmp_path):
  directory = tmp_path / "checkpoints"
  _, checkpoint, _ = _small_checkpoints(directory, 1)
  before = tree_digest(directory)
  (directory / "ckpt-2_temp").mkdir()
  (directory / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
  (directory / "checkpoint.tmp0123abcd").write_text("model_checkpoint_")
  checkpointing.make_manager(checkpoint, str(directory), 1)
  assert tree_digest(directory) == before


# --- a damaged checkpoint in a run ------------------------------------------------
def _checkpoint_numbers(model_dir):
  return sorted(int(p.name[len("ckpt-"):-len(".index")])
                for p in (model_dir / "checkpoints").glob("ckpt-*.index"))


def test_a_search_resumes_past_a_corrupt_newest_checkpoint_to_the_same_result(
    reference, tmp_path, caplog):
  run = _copy(reference, tmp_path)
  assert _checkpoint_numbers(run) == [2, 3, 4]
  (run / "checkpoints" / "ckpt-4.data-00000-of-00001").write_bytes(_random_bytes())
  for name in ("genotype.json", "posterior.json", "result.json"):
    (run / name).unlink()   # so that the resumed run must write them again
  with caplog.at_level(logging.INFO):
    api.search(model_dir=str(run), **SEARCH)
  warnings = _messages(caplog, "cannot be read")
  assert len(warnings) == 1 and warnings[0].startswith(
      f"checkpoint {run / 'checkpoints' / 'ckpt-4'} cannot be read (Read less "
      "bytes than requested); resuming from the older ckpt-3")
  # ckpt-3 lies in the joint phase: the rest of it and the update ran again.
  assert _messages(caplog, "resumed from")[0].startswith(
      f"resumed from {run / 'checkpoints' / 'ckpt-3'}: iteration 1, phase search, step 1")
  _assert_same_search(run, reference)
  assert _leftovers(run) == []


def test_a_search_with_no_readable_checkpoint_stops_and_changes_nothing(
    reference, tmp_path):
  run = _copy(reference, tmp_path)
  for data in (run / "checkpoints").glob("*.data-*"):
    data.write_bytes(_random_bytes())
  before = tree_digest(run)
  with pytest.raises(CheckpointUnreadableError) as error:
    api.search(model_dir=str(run), **SEARCH)
  assert str(error.value).startswith(
      f"none of the 3 checkpoints in {run / 'checkpoints'} can be read")
  # flags.txt records each start's command (here: the copy's --model_dir).
  after = tree_digest(run)
  assert after.pop("flags.txt") != before.pop("flags.txt") and after == before


def test_export_reads_past_a_corrupt_newest_checkpoint(tmp_path, caplog):
  # The finished tiny retrain run of tests/fixtures/legacy, with a copy of
  # its checkpoint as a newer one whose data is then damaged: the export
  # serves what the older one held.
  legacy = ROOT / "tests" / "fixtures" / "legacy"
  run = _copy(legacy / "retrain_run", tmp_path)
  checkpoints = run / "checkpoints"
  for suffix in (".index", ".data-00000-of-00001"):
    shutil.copy(checkpoints / f"ckpt-2{suffix}", checkpoints / f"ckpt-3{suffix}")
  (checkpoints / "ckpt-3.data-00000-of-00001").write_bytes(_random_bytes())
  with caplog.at_level(logging.WARNING):
    path = api.export(model_dir=str(run), export_dir=str(tmp_path / "export"),
                      model_name="legacy")
  assert _messages(caplog, "cannot be read")[0].startswith(
      f"checkpoint {checkpoints / 'ckpt-3'} cannot be read (")
  outputs = np.load(legacy / "outputs.npz")
  served = tf.saved_model.load(path).signatures["serving_default"](
      images=tf.constant(outputs["retrain_images"]))
  np.testing.assert_allclose(served["probabilities"].numpy(),
                             outputs["retrain_probabilities"], rtol=1e-5, atol=1e-6)


# --- write failures ---------------------------------------------------------------
def _no_space(path):
  return OSError(errno.ENOSPC, NO_SPACE, str(path))


def _fail_replace(monkeypatch, name):
  """os.replace onto a file called `name` fails as on a full disk (the last
  step of io_utils.atomic_write_bytes: the temporary file exists then)."""
  real = os.replace

  def replace(source, target, *args, **kwargs):
    if os.path.basename(os.fspath(target)) == name:
      raise _no_space(target)
    return real(source, target, *args, **kwargs)

  monkeypatch.setattr(os, "replace", replace)


def _fail_checkpoint(monkeypatch, after_saves):
  """The manager's save number `after_saves + 1` fails as TensorFlow's does
  on a full disk: ckpt-N_temp/ holds part of the data, then SaveV2 raises."""
  real = tf.train.CheckpointManager.save
  calls = []

  def save(manager, checkpoint_number=None, **kwargs):
    calls.append(checkpoint_number)
    if len(calls) <= after_saves:
      return real(manager, checkpoint_number=checkpoint_number, **kwargs)
    temp = pathlib.Path(manager.directory) / f"ckpt-{checkpoint_number}_temp"
    temp.mkdir(parents=True, exist_ok=True)
    part = temp / "part-00000-of-00001.data-00000-of-00001"
    part.write_bytes(b"\0" * 64)
    raise tf.errors.ResourceExhaustedError(
        None, None, f"{part}.tempstate1234; {NO_SPACE}")

  monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def _fail_tensorboard(monkeypatch):
  def scalar(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, f"/x/events.out.tfevents.1.v2; {NO_SPACE}\n\tFailed to "
        "flush 2 events")
  monkeypatch.setattr(tf.summary, "scalar", scalar)


def test_search_write_failures_one_after_another_leave_a_resumable_run(
    reference, tmp_path, monkeypatch):
  # A search fails at a write of each phase in turn (each rerun resumes
  # from its last checkpoint and gets further), then runs through and ends
  # as the uninterrupted search. After every failure: one OutputWriteError
  # naming the file and the reason, no temporary file or folder, no lock.
  run = tmp_path / "run"
  # config.json: before anything else; TensorBoard: at the warm-up's end,
  # after ckpt-1; ckpt-3: in the joint phase, after the rerun saved ckpt-2;
  # posterior.json: in the update.
  faults = [
      ("config.json", lambda: _fail_replace(monkeypatch, "config.json")),
      ("tensorboard", lambda: _fail_tensorboard(monkeypatch)),
      ("checkpoints/ckpt-3", lambda: _fail_checkpoint(monkeypatch, 1)),
      ("posterior.json", lambda: _fail_replace(monkeypatch, "posterior.json")),
  ]
  for target, inject in faults:
    inject()
    with pytest.raises(OutputWriteError) as error:
      api.search(model_dir=str(run), **SEARCH)
    monkeypatch.undo()
    assert str(error.value) == f"cannot write {run / target}: {NO_SPACE}; {RESUME_HINT}"
    assert error.value.exit_code == OUTPUT_WRITE_EXIT_CODE
    assert _leftovers(run) == [], target
    if target == "tensorboard":
      assert _checkpoint_numbers(run) == [1]
    if target == "checkpoints/ckpt-3":
      assert _checkpoint_numbers(run) == [1, 2]
  api.search(model_dir=str(run), **SEARCH)
  _assert_same_search(run, reference)


@pytest.mark.parametrize("target", ["posterior.json", "genotype.json",
                                    "cells/normal.dot", "result.json"])
def test_a_failed_output_of_a_finished_search_keeps_its_previous_version(
    reference, tmp_path, monkeypatch, target):
  # A finished search run again writes its outputs again: when one of them
  # fails, the file it would have replaced is still there, whole.
  run = _copy(reference, tmp_path)
  before = tree_digest(run)
  _fail_replace(monkeypatch, os.path.basename(target))
  with pytest.raises(OutputWriteError) as error:
    api.search(model_dir=str(run), **SEARCH)
  monkeypatch.undo()
  assert str(error.value) == f"cannot write {run / target}: {NO_SPACE}; {RESUME_HINT}"
  assert _leftovers(run) == []
  assert tree_digest(run)[target] == before[target]


def test_atomic_write_keeps_the_old_file_and_removes_its_temporary(
    tmp_path, monkeypatch):
  path = tmp_path / "posterior.json"
  path.write_text("old\n")
  real_write = os.write

  def write(fd, data):   # the disk fills up in the middle of the file
    raise _no_space(path)

  monkeypatch.setattr(os, "fsync", lambda fd: write(fd, b""))
  with pytest.raises(OutputWriteError) as error:
    io_utils.atomic_write_text(path, "new")
  assert str(error.value) == f"cannot write {path}: {NO_SPACE}; {RESUME_HINT}"
  assert sorted(os.listdir(tmp_path)) == ["posterior.json"]
  assert path.read_text() == "old\n"
  del real_write


def test_a_keras_file_save_that_fails_keeps_the_old_one(tmp_path, monkeypatch):
  import keras  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.compress import compressor  # pylint: disable=g-import-not-at-top
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  path = tmp_path / "slim_model.keras"
  path.write_bytes(b"old")

  def save(self, filepath, *args, **kwargs):
    pathlib.Path(filepath).write_bytes(b"half a zip")
    raise _no_space(filepath)

  monkeypatch.setattr(keras.Model, "save", save)
  with pytest.raises(OutputWriteError) as error:
    compressor.save_keras_atomic(model, str(path))
  assert str(error.value) == f"cannot write {path}: {NO_SPACE}; {RESUME_HINT}"
  assert sorted(os.listdir(tmp_path)) == ["slim_model.keras"]
  assert path.read_bytes() == b"old"


def test_a_savedmodel_export_that_fails_touches_no_version(tmp_path, monkeypatch):
  import keras  # pylint: disable=g-import-not-at-top
  from bayesnas_tf.training import export as export_lib  # pylint: disable=g-import-not-at-top
  model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(3)])
  options = dict(export_dir=str(tmp_path), model_name="m", image_shape=(2, 2, 1),
                 mean=[0.0], std=[1.0], class_names=["a", "b", "c"])
  first = export_lib.export_saved_model(model, **options)
  before = tree_digest(tmp_path)
  real = tf.saved_model.save

  def save(module, directory, **kwargs):
    real(module, directory, **kwargs)   # most of it is written, then:
    raise tf.errors.ResourceExhaustedError(
        None, None, f"{directory}/variables/variables.data; {NO_SPACE}")

  monkeypatch.setattr(tf.saved_model, "save", save)
  with pytest.raises(OutputWriteError) as error:
    export_lib.export_saved_model(model, **options)
  assert str(error.value).startswith(f"cannot write {tmp_path / 'm'}: {NO_SPACE}; ")
  assert error.value.exit_code == OUTPUT_WRITE_EXIT_CODE
  # The staging folder is gone and version 1 is as it was; no version 2.
  assert tree_digest(tmp_path) == before and first == str(tmp_path / "m" / "1")


def test_a_write_failure_from_any_library_is_one_line_too(tmp_path, monkeypatch):
  # modes.run's last resort: a full disk met by a file that no writer of
  # ours wraps (a library's own) still ends as OutputWriteError, exit 74;
  # other errors pass unchanged.
  from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
  config = api.make_config("search", dataset="digits", model_dir=str(tmp_path / "run"))
  stray = tf.errors.ResourceExhaustedError(
      None, None, f"{{{{function_node __wrapped__SaveV2}}}} /a/b.data; {NO_SPACE} [Op:SaveV2]")
  for error, expected in ((_no_space("/a/c.json"), "/a/c.json"), (stray, "/a/b.data")):
    def fail(config, flags_text, error=error):
      raise error
    monkeypatch.setitem(modes.MODES, "search", fail)
    with pytest.raises(OutputWriteError) as raised:
      modes.run(config)
    assert str(raised.value) == f"cannot write {expected}: {NO_SPACE}; {RESUME_HINT}"
  monkeypatch.setitem(modes.MODES, "search", lambda config, flags_text: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    modes.run(config)
  assert not (tmp_path / "run").exists()   # the lock and its folder are gone


def _mount_small_tmpfs(folder, size):
  folder.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(folder)], capture_output=True, text=True)
  return mounted.returncode == 0, mounted.stderr.strip()


def test_a_full_disk_is_one_line_exit_74_and_nothing_is_left_half_written(tmp_path):
  # A real full disk: a 1 MiB tmpfs where root may mount one (CI), else a
  # file-size limit (RLIMIT_FSIZE: "File too large"), which any user can
  # set. (That the run then resumes: the in-process tests above.)
  disk = tmp_path / "disk"
  mounted, why = _mount_small_tmpfs(disk, "1m")
  model_dir = disk / "run"
  try:
    if mounted:
      reason, preexec = NO_SPACE, None
      # Most of the space goes before the run starts: its first checkpoint
      # fills the rest.
      (disk / "filler").write_bytes(b"\0" * 900_000)
    else:
      disk.mkdir(exist_ok=True)
      reason = os.strerror(errno.EFBIG)
      preexec = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
    failed = _run_main_with(preexec, *SEARCH_FLAGS, f"--model_dir={model_dir}")
    assert failed.returncode == OUTPUT_WRITE_EXIT_CODE, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {model_dir / 'checkpoints' / 'ckpt-1'}: {reason}; "
        f"{RESUME_HINT}")
    assert _leftovers(model_dir) == []
    assert not list((model_dir / "checkpoints").glob("ckpt-1*"))
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.json",
                                             "flags.txt", "tensorboard"]
  finally:
    if mounted:
      subprocess.run(["umount", str(disk)], check=False)
  if not mounted:
    pytest.skip(f"checked with RLIMIT_FSIZE only: no tmpfs could be mounted ({why})")


def _run_main_with(preexec, *args):
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        env=environment, preexec_fn=preexec)


# --- one run per model_dir ---------------------------------------------------------
def _lock_of(pid, **changes):
  holder = dataclasses.replace(
      run_lock._this_process("python main.py --mode=search"),  # pylint: disable=protected-access
      pid=pid, process_start=run_lock._process_start(pid))  # pylint: disable=protected-access
  return dataclasses.replace(holder, **changes)


def _write_lock(model_dir, holder):
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / run_lock.LOCK_FILE).write_text(json.dumps(dataclasses.asdict(holder)))


def test_a_live_holder_is_refused_in_one_line_and_nothing_is_written(tmp_path):
  sleeper = subprocess.Popen(["sleep", "60"])
  try:
    model_dir = tmp_path / "run"
    holder = _lock_of(sleeper.pid)
    _write_lock(model_dir, holder)
    before = tree_digest(model_dir)
    with pytest.raises(ModelDirInUseError) as error:
      api.search(model_dir=str(model_dir), **SEARCH)
    assert str(error.value) == (
        f"--model_dir={model_dir} is in use by another run ({holder.describe()}); "
        "wait for it to end or stop it, or pass another --model_dir (its lock: "
        f"{model_dir / '.lock'})")
    assert f"pid {sleeper.pid} on {holder.host}, started " in str(error.value)
    assert "command: python main.py --mode=search" in str(error.value)
    assert error.value.exit_code == 1
    assert tree_digest(model_dir) == before
  finally:
    sleeper.kill()
    sleeper.wait()


def test_stale_locks_are_told_from_live_ones():
  sleeper = subprocess.Popen(["sleep", "60"])
  gone = subprocess.Popen(["true"])
  gone.wait()
  try:
    now = time.time()
    assert run_lock.stale_reason(_lock_of(sleeper.pid)) is None
    assert run_lock.stale_reason(_lock_of(os.getpid())) is None
    assert run_lock.stale_reason(_lock_of(gone.pid)) == (
        "no such process runs on this host")
    # A reused process id: alive, but started at another time.
    assert run_lock.stale_reason(_lock_of(
        sleeper.pid, process_start=_lock_of(sleeper.pid).process_start + 1)) == (
            "its process id now belongs to another process")
    # Another host: only the heartbeat tells.
    elsewhere = _lock_of(12345, host="elsewhere", boot_id="x", process_start=None)
    assert run_lock.stale_reason(dataclasses.replace(elsewhere, heartbeat=now - 60),
                                 now) is None
    assert run_lock.stale_reason(dataclasses.replace(elsewhere, heartbeat=now - 600),
                                 now) == "its heartbeat stopped 10 minutes ago"
    # This host, restarted since (another boot): the process is gone.
    assert run_lock.stale_reason(_lock_of(sleeper.pid, boot_id="an earlier boot")) == (
        "the host has restarted since")
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(reference, tmp_path, caplog):
  # kill -9 leaves its lock behind; the same command resumes (the finished
  # search here only evaluates and writes its outputs again).
  gone = subprocess.Popen(["true"])
  gone.wait()
  run = _copy(reference, tmp_path)
  holder = _lock_of(gone.pid)
  _write_lock(run, holder)
  with caplog.at_level(logging.WARNING):
    api.search(model_dir=str(run), **SEARCH)
  assert _messages(caplog, "taking over") == [
      f"--model_dir={run}: taking over the lock of a run that is gone (no such "
      f"process runs on this host); it was {holder.describe()}"]
  assert not (run / run_lock.LOCK_FILE).exists()
  _assert_same_search(run, reference)


def test_the_heartbeat_refreshes_the_lock_and_release_removes_it(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
  lock = run_lock.RunLock(str(tmp_path / "new"))
  lock.acquire()
  first = run_lock.read_holder(str(tmp_path / "new"))
  deadline = time.time() + 30
  while run_lock.read_holder(str(tmp_path / "new")).heartbeat == first.heartbeat:
    assert time.time() < deadline
    time.sleep(0.05)
  assert run_lock.read_holder(str(tmp_path / "new")).token == first.token
  lock.release()
  # The folder it created for the run is gone with the lock: nothing else
  # was written.
  assert not (tmp_path / "new").exists()


def test_a_second_process_on_a_locked_model_dir_exits_1_with_one_line(tmp_path):
  model_dir = tmp_path / "run"
  with run_lock.hold(str(model_dir), command="python main.py --mode=search (first)"):
    holder = run_lock.read_holder(str(model_dir))
    result = run_main(*SEARCH_FLAGS, f"--model_dir={model_dir}")
    assert sorted(os.listdir(model_dir)) == [".lock"]
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --model_dir={model_dir} is in use by another run "
      f"({holder.describe()}); wait for it to end or stop it, or pass another "
      f"--model_dir (its lock: {model_dir / '.lock'})")
  assert not model_dir.exists()
