"""End-to-end search: outputs, a finished run not redone, the CIFAR-10 subset,
bad input. (Resume after a kill: test_preemption.py; MirroredStrategy:
test_scale_out.py.)"""

import json

import pytest

from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.config import PRUNE_THRESHOLD
from bayesnas_tf.spaces.dag.space import BAYESNAS_SPACE
from conftest import TINY_SEARCH_FLAGS
from conftest import run_main, tree_digest

PRIMITIVES = ["sep3", "max", "avg", "id"]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("search") / "run"
  # Also exercises --strategy=one_device (a runtime choice: the other tests
  # rerun these flags without it).
  result = run_main(*TINY_SEARCH_FLAGS, "--strategy=one_device",
                    f"--model_dir={model_dir}")
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


# A search killed mid-run (SIGKILL) and resumed: test_preemption.py.


# --strategy=mirrored against one device: test_scale_out.py (with the
# two-worker run, against the same one-process run).


def test_other_configuration_in_model_dir_is_refused(finished_search):
  model_dir, _ = finished_search
  before = tree_digest(model_dir)
  result = run_main(*TINY_SEARCH_FLAGS, "--channels=8", f"--model_dir={model_dir}")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = "\n".join(result.stderr.strip().splitlines()[-2:])
  assert "holds a search run with a different configuration" in last
  assert "supernet.channels: 4 -> 8" in last and "new --model_dir" in last
  assert tree_digest(model_dir) == before


# The cell supernet on the CIFAR-10 subset (32x32, crop and cutout):
# test_progress.py's piped search.
