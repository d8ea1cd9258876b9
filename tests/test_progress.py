"""Readable logs off a terminal (issue 10, item 1) and the figures a search
leaves for scripts: result.json, warnings in the log and in posterior.json,
and the per-update TensorBoard scalars (items 0 and 4).

One tiny search runs as a subprocess with stdout and stderr to pipes, as in
a batch job, with --progress left on: the process boundary is the point. It
reads the CIFAR-10 subset (32x32, crop and cutout) where ../shared/data is
present, so the cell supernet also runs on real 32x32 images; the digits
elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re

import pytest

from bayesnas_tf.runtime import progress
from conftest import CIFAR_SUBSET, TINY_SEARCH_FLAGS, run_main

ANSI = re.compile(r"\x1b\[")
# 96 images in batches of 16: a warm-up of 2 steps and a joint phase of 3
# steps, a log line every 2 steps; a threshold no gamma reaches, so the
# update prunes nothing and the search must say so.
PIPED_FLAGS = [f for f in TINY_SEARCH_FLAGS if not f.startswith((
    "--noprogress", "--max_train_examples", "--batch_size", "--search_epochs",
    "--iterations", "--warmup_fraction", "--primitives"))] + [
        "--max_train_examples=96", "--batch_size=16", "--warmup_fraction=0.4",
        "--search_epochs=1", "--iterations=1", "--primitives=max,id",
        "--log_every=2", "--prune_threshold=1e-12"]
if CIFAR_SUBSET.exists():
  PIPED_FLAGS = [f for f in PIPED_FLAGS if not f.startswith((
      "--dataset", "--crop_padding", "--cutout"))] + [
          f"--dataset=npz:{CIFAR_SUBSET}", "--crop_padding=4", "--cutout=16"]


@pytest.fixture(scope="module")
def piped_search(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("piped") / "run"
  result = run_main(*PIPED_FLAGS, f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result.stdout + result.stderr


def test_piped_output_has_no_bar_and_periodic_lines(piped_search):
  _, output = piped_search
  assert "\r" not in output
  assert not ANSI.search(output), output[ANSI.search(output).start() - 200:][:400]
  # One line every 2 steps (the joint phase has 3), with speed and ETA ...
  periodic = re.findall(r"iteration 1/1, search: step 2/3 \(66%\), loss [\d.]+, "
                        r"acc [\d.]+, penalty [\d.e+-]+, \d+ images/s, ETA \d+:\d\d:\d\d",
                        output)
  assert len(periodic) == 1, output[-3000:]
  # ... and one at the end of every phase, the Hessian pass included.
  for label in ("warmup", "search", "ggn Hessian"):
    assert re.search(rf"iteration 1/1, {label}: done, \d+ step\(s\) in [\d.]+ s", output), label
  # TensorFlow's own INFO lines (a checkpoint is written every 4 steps here)
  # stay out of the job's log.
  assert "Sharding callback duration" not in output


def test_result_json_and_warning_when_nothing_is_pruned(piped_search):
  model_dir, output = piped_search
  result = json.loads((model_dir / "result.json").read_text())
  assert result["mode"] == "search" and result["wall_time_s"] > 0
  assert 0.0 <= result["test_accuracy"] <= 1.0
  assert 0.0 <= result["accuracy_before_pruning"] <= 1.0
  # 2 primitives on 8 edges per cell type, none pruned.
  assert result["ops"] == {"normal": {"kept": 16, "total": 16},
                           "reduce": {"kept": 16, "total": 16}}
  assert result["genotype_path"].endswith("genotype.json")
  assert result["genotype"]["normal"]
  # The warning, with what to change, in the log and in both JSON files.
  warnings = [w for w in result["warnings"] if "pruned no op" in w]
  assert len(warnings) == 1 and "--lambda_child" in warnings[0]
  assert "search result: the update pruned no op" in output
  posterior = json.loads((model_dir / "posterior.json").read_text())
  assert posterior["warnings"] == result["warnings"]
  # Every group's verdict is its gamma against the run's threshold.
  assert all(g["kept"] == (g["gamma"] > 1e-12) for g in posterior["groups"])
  dataset = next(f for f in PIPED_FLAGS if f.startswith("--dataset="))
  assert result["genotype"]["search"]["dataset"] == dataset.split("=", 1)[1]


def test_update_writes_gamma_entropy_and_kept_scalars(piped_search):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  model_dir, _ = piped_search
  tags = set()
  for path in (model_dir / "tensorboard").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags.update(value.tag for value in event.summary.value)
  assert {"kept_ops/normal", "kept_ops/reduce"} <= tags
  assert "gamma/normal/in0->n0/max" in tags and "entropy/reduce/n0->n3/all" in tags
  assert len([t for t in tags if t.startswith("gamma/")]) == 2 * 8 * 3


# --- PhaseProgress in-process -------------------------------------------------
def _lines(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "absl"]


def test_plain_lines_every_n_steps_and_at_the_end(caplog, monkeypatch):
  monkeypatch.setattr(progress, "stdout_is_terminal", lambda: True)
  with caplog.at_level(logging.INFO, logger="absl"):
    bar = progress.PhaseProgress("epoch 1/2", 7, batch_size=4, progress=False,
                                 log_every=3)
    for step in range(1, 8):
      bar.update(step, loss=float(step), acc=0.5)
    bar.end(test_accuracy=0.75)
  lines = _lines(caplog)
  assert bar.bar is None and bar.lines == 3 and len(lines) == 3
  # Means since the previous line: steps 1-3, then 4-6.
  assert lines[0].startswith("epoch 1/2: step 3/7 (42%), loss 2.0000, acc 0.5000, ")
  assert lines[1].startswith("epoch 1/2: step 6/7 (85%), loss 5.0000, ")
  assert re.search(r"\d+ images/s, ETA \d+:\d\d:\d\d$", lines[0])
  # The end line: means over the whole phase, and the extra figures.
  assert re.match(r"epoch 1/2: done, 7 step\(s\) in [\d.]+ s, loss 4.0000, "
                  r"acc 0.5000, test_accuracy 0.7500", lines[2])


def test_log_every_zero_logs_only_the_end(caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    bar = progress.PhaseProgress("warmup", 5, log_every=0)
    for step in range(1, 6):
      bar.update(step, loss=1.0)
    bar.end()
  assert len(_lines(caplog)) == 1 and "done, 5 step(s)" in _lines(caplog)[0]


def test_bar_only_on_a_terminal_with_progress_on(monkeypatch, caplog):
  monkeypatch.setattr(progress, "stdout_is_terminal", lambda: True)
  with caplog.at_level(logging.INFO, logger="absl"):
    bar = progress.PhaseProgress("search", 4, progress=True, log_every=1)
    for step in range(1, 5):
      bar.update(step, loss=1.0)
  assert bar.bar is not None and bar.lines == 0 and not _lines(caplog)
  monkeypatch.setattr(progress, "stdout_is_terminal", lambda: False)
  assert progress.PhaseProgress("search", 4, progress=True).bar is None


def test_resumed_phase_counts_from_its_start(caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    bar = progress.PhaseProgress("search", 10, start=6, log_every=2)
    for step in range(7, 11):
      bar.update(step, loss=1.0)
    bar.end()
  lines = _lines(caplog)
  assert lines[0].startswith("search: step 8/10 (80%), loss 1.0000")
  assert "done, 4 step(s)" in lines[-1]


# --- cell diagrams in TensorBoard ---------------------------------------------
def _image_tags(logdir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tags = {}
  for path in pathlib.Path(logdir).glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          tags[value.tag] = value
  return tags


def _write_one_update(logdir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES  # pylint: disable=import-outside-toplevel
  from bayesnas_tf.search import summaries  # pylint: disable=import-outside-toplevel
  writer = tf.summary.create_file_writer(str(logdir))
  groups = [{"cell_type": "normal", "edge": "in0->n0", "gate": "max",
             "gamma": 0.5, "entropy": 1.0}]
  summaries.write_update_summaries(
      writer, 7, groups, {"normal": {"kept": 1, "total": 2}},
      KNOWN_GENOTYPES["bayesnas_l0.01"])
  return _image_tags(logdir)


def test_cell_diagrams_with_real_graphviz(tmp_path):
  from bayesnas_tf.spaces import pictures  # pylint: disable=import-outside-toplevel
  reason = pictures.png_skip_reason()
  if reason is not None:
    pytest.skip(f"cell diagrams need Graphviz: {reason}")
  images = _write_one_update(tmp_path)
  assert set(images) == {"cells/normal", "cells/reduce"}


def test_cell_diagrams_through_graphviz_with_a_stand_in_dot(tmp_path, monkeypatch):
  """The whole path (graphviz package -> `dot` process -> PNG -> image
  summary) with a `dot` on PATH that answers with a fixed PNG, so it runs
  where Graphviz is not installed."""
  pytest.importorskip("graphviz")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  png = tmp_path / "cell.png"
  png.write_bytes(tf.io.encode_png(tf.fill([5, 9, 3], tf.constant(200, tf.uint8))).numpy())
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  dot = bin_dir / "dot"
  dot.write_text(f"#!/bin/sh\ncat > /dev/null\ncat '{png}'\n")
  dot.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  images = _write_one_update(tmp_path / "tb")
  assert set(images) == {"cells/normal", "cells/reduce"}
  encoded = images["cells/normal"].tensor.string_val
  assert [int(encoded[0]), int(encoded[1])] == [9, 5]  # width, height


def test_cell_diagrams_skipped_with_one_line_without_dot(tmp_path, monkeypatch, caplog):
  from bayesnas_tf.spaces import pictures  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(pictures.shutil, "which", lambda name: None)
  with caplog.at_level(logging.INFO, logger="absl"):
    images = _write_one_update(tmp_path)
  assert images == {}
  notes = [r.getMessage() for r in caplog.records
           if "cell diagrams are not written to TensorBoard" in r.getMessage()]
  assert len(notes) == 1 and "`dot` program is not on PATH" in notes[0]


# --- warnings of a finished search ---------------------------------------------
def _warnings(accuracy, kept_normal, kept_reduce, **search):
  from bayesnas_tf import api  # pylint: disable=import-outside-toplevel
  from bayesnas_tf.search import diagnostics  # pylint: disable=import-outside-toplevel
  config = api.make_config("search", **search)
  ops = {"normal": {"kept": kept_normal, "total": 56},
         "reduce": {"kept": kept_reduce, "total": 56}}
  return diagnostics.search_warnings(config, accuracy, 10, ops)


def test_no_warning_for_a_meaningful_search():
  assert _warnings(0.93, 20, 31) == []


def test_warning_near_chance_names_epochs_and_learning_rate():
  (warning,) = _warnings(0.2, 20, 31, search_epochs=3, learning_rate=0.05)
  assert "test accuracy 0.200, near chance (0.100 for 10 classes)" in warning
  assert "--search_epochs=3" in warning and "--learning_rate (now 0.05)" in warning


def test_warning_when_nothing_or_everything_is_pruned():
  (nothing,) = _warnings(0.9, 56, 56, lambda_child=0.02)
  assert "pruned no op (normal 56/56, reduce 56/56 kept)" in nothing
  assert "raise --lambda_child (now 0.02)" in nothing
  (everything,) = _warnings(0.9, 0, 12)
  assert "pruned every op of the normal cell (0/56 kept)" in everything
  assert "Lower --lambda_child" in everything
