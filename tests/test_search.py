"""End-to-end search: outputs, resume after a kill, MirroredStrategy, bad input."""

import json
import pathlib
import signal
import time

import numpy as np
import pytest

from bayesnas_tf.genotype import Genotype
from bayesnas_tf.ops import PRUNE_THRESHOLD
from bayesnas_tf.search_space import BAYESNAS_SPACE
from conftest import CIFAR_SUBSET, TINY_SEARCH_FLAGS, requires_shared_data
from conftest import run_main, start_main, tree_digest

PRIMITIVES = ["sep3", "max", "avg", "id"]


def _gammas(model_dir):
  posterior = json.loads((pathlib.Path(model_dir) / "posterior.json").read_text())
  return np.array([g["gamma"] for g in posterior["groups"]])


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("search") / "run"
  result = run_main(*TINY_SEARCH_FLAGS, f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


def test_search_writes_every_output(finished_search):
  model_dir, _ = finished_search
  for name in ("config.json", "flags.txt", "genotype.json", "posterior.json",
               "cells/normal.dot", "cells/reduce.dot"):
    assert (model_dir / name).is_file(), name
  assert list((model_dir / "tensorboard").glob("events.out.tfevents.*"))
  assert list((model_dir / "checkpoints").glob("ckpt-*.index"))
  config = json.loads((model_dir / "config.json").read_text())
  assert config["search"]["iterations"] == 2
  assert config["supernet"]["primitives"] == PRIMITIVES
  assert "--lambda_child=0.1" in (model_dir / "flags.txt").read_text()


def test_genotype_keeps_exactly_the_ops_above_threshold(finished_search):
  model_dir, _ = finished_search
  genotype = Genotype.load(model_dir / "genotype.json")
  assert genotype.search["lambda_child"] == 0.1
  assert genotype.search["seed"] == 0
  assert genotype.search["hessian"] == "ggn"
  assert genotype.search["iterations"] == 2
  posterior = json.loads((model_dir / "posterior.json").read_text())
  assert posterior["updates"] == 2
  groups = posterior["groups"]
  assert len(groups) == 2 * 8 * (len(PRIMITIVES) + 1)
  for group in groups:
    for key in ("w", "gamma", "omega", "C", "H", "kept"):
      assert key in group
    assert group["kept"] == (group["gamma"] > PRUNE_THRESHOLD), group
    assert len(group["w"]) == (1 if group["cell_type"] == "normal" else 2)
  # The genotype lists an op iff its own gate and its edge gate are kept.
  kept = {(g["cell_type"], g["edge"], g["gate"]) for g in groups if g["kept"]}
  for cell_type in ("normal", "reduce"):
    spec = BAYESNAS_SPACE.cell(cell_type)
    expected = {}
    for (src, dst), name in zip(spec.edges, spec.edge_names):
      for op in PRIMITIVES:
        if (cell_type, name, op) in kept and (cell_type, name, "all") in kept:
          expected.setdefault(dst, set()).add((op, src))
    derived = {f"n{j}": set(node) for j, node in
               enumerate(genotype.cell(cell_type)) if node}
    assert derived == expected
  # With these settings some ops are pruned and some survive.
  assert 0 < len(kept) < len(groups)


def test_groups_pruned_in_the_first_update_are_masked_in_the_second(finished_search):
  model_dir, _ = finished_search
  posterior = json.loads((model_dir / "posterior.json").read_text())
  by_round = {0: 0, 1: 0, 2: 0}
  for group in posterior["groups"]:
    by_round[group["pruned_at"]] += 1
    assert group["kept"] == (group["pruned_at"] == 0)
    if group["pruned_at"] == 1:
      # Masked during iteration 2: its op was not computed, so the gate that
      # entered update 2 is exactly 0 and so is its Hessian, and its gamma is
      # the frozen value of update 1.
      assert all(w == 0.0 for w in group["w"]), group
      assert all(h == 0.0 for h in group["H"]), group
      assert group["gamma"] <= PRUNE_THRESHOLD
    elif group["pruned_at"] == 0:
      assert any(w != 0.0 for w in group["w"]), group
  assert by_round[1] > 0 and by_round[0] > 0, by_round


def test_finished_search_is_not_redone(finished_search, tmp_path):
  model_dir, _ = finished_search
  before = tree_digest(model_dir / "checkpoints")
  result = run_main(*TINY_SEARCH_FLAGS, f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert tree_digest(model_dir / "checkpoints") == before


def _latest_checkpoint_number(model_dir):
  index = pathlib.Path(model_dir) / "checkpoints" / "checkpoint"
  if not index.exists():
    return -1
  first = index.read_text().splitlines()[0]
  return int(first.rsplit("ckpt-", 1)[1].rstrip('"'))


def test_killed_search_resumes_to_the_same_result(finished_search, tmp_path):
  reference_dir, _ = finished_search
  model_dir = tmp_path / "killed"
  flags = (*TINY_SEARCH_FLAGS, f"--model_dir={model_dir}")
  # Warm-up: 3 steps; search: 3 epochs of 15 steps (global steps 4..48). A
  # checkpoint at global step 12 or 16 lies inside the first search phase.
  process = start_main(*flags)
  deadline = time.time() + 600
  while _latest_checkpoint_number(model_dir) < 12:
    assert process.poll() is None, process.stderr.read()[-3000:]
    assert time.time() < deadline, "no mid-search checkpoint in time"
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = _latest_checkpoint_number(model_dir)
  assert 12 <= killed_at < 48, killed_at   # inside the search phase
  assert not (model_dir / "genotype.json").exists()
  result = run_main(*flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from" in result.stderr
  assert Genotype.load(model_dir / "genotype.json") == Genotype.load(
      reference_dir / "genotype.json")
  np.testing.assert_allclose(_gammas(model_dir), _gammas(reference_dir),
                             rtol=1e-6)


def test_mirrored_strategy_matches_one_device(tmp_path):
  # One warm-up step, one joint step, the Hessian and the update, on one
  # device and on two replicas of 16 examples each. Global-batch BN
  # statistics, all-reduced gradients and Hessian sums and the 1/replicas
  # scaling of the penalty and weight decay make it the same computation up
  # to the order of float32 sums. Tolerance: rtol 1e-4 on every gamma. (Longer
  # runs are not compared: the search amplifies rounding by roughly 3-10x per
  # SGD step on these tiny nets, through max-pool argmax and ReLU switches.)
  flags = [f for f in TINY_SEARCH_FLAGS if not f.startswith(
      ("--max_train_examples", "--search_epochs", "--iterations",
       "--warmup_fraction", "--hessian_batches", "--primitives"))]
  # Parameter-free ops keep the traces (two replicas each) short; the
  # stem, preprocessing and classifier still carry BN and weights.
  flags += ["--primitives=max,avg,id", "--max_train_examples=64", "--warmup_fraction=0.5",
            "--search_epochs=1", "--iterations=1", "--hessian_batches=1"]
  runs, processes = {}, {}
  for strategy in ("default", "mirrored"):  # Both at once: mostly tracing.
    runs[strategy] = tmp_path / strategy
    processes[strategy] = start_main(*flags, f"--model_dir={runs[strategy]}",
                                     f"--strategy={strategy}", "--logical_cpu_devices=2")
  stderr = {}
  for strategy, process in processes.items():
    _, stderr[strategy] = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[strategy][-3000:]
  assert "MirroredStrategy over" in stderr["mirrored"]
  gammas = _gammas(runs["default"])
  assert len(np.unique(np.round(gammas, 3))) > 10     # not trivially equal
  np.testing.assert_allclose(_gammas(runs["mirrored"]), gammas, rtol=1e-4)
  assert Genotype.load(runs["mirrored"] / "genotype.json") == Genotype.load(
      runs["default"] / "genotype.json")


@requires_shared_data(CIFAR_SUBSET)
def test_search_on_the_cifar10_subset(tmp_path):
  model_dir = tmp_path / "cifar"
  # The real 32x32 data through the whole pipeline; one short phase each.
  flags = [f for f in TINY_SEARCH_FLAGS
           if not f.startswith(("--dataset", "--iterations", "--crop", "--cutout",
                                "--max_train_examples", "--search_epochs",
                                "--hessian_batches"))]
  result = run_main(*flags, f"--dataset=npz:{CIFAR_SUBSET}", "--iterations=1",
                    "--crop_padding=4", "--cutout=16", "--max_train_examples=160",
                    "--search_epochs=1", "--hessian_batches=1",
                    f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  genotype = Genotype.load(model_dir / "genotype.json")
  assert genotype.search["dataset"] == f"npz:{CIFAR_SUBSET}"
  assert all(g["kept"] == (g["gamma"] > PRUNE_THRESHOLD) for g in json.loads(
      (model_dir / "posterior.json").read_text())["groups"])
