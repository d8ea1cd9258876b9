"""The proxyless search from the command line (PROXYLESS.md 3): search ->
retrain -> export on a small PyramidNet, the served model without the
project's code, and bad input -> one clear line."""

import json
import os
import re
import pathlib

import numpy as np
import pytest

from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.config import PRUNE_THRESHOLD
from bayesnas_tf.spaces.tree.genotype import TreeGenotype, trainable_params
from bayesnas_tf.spaces.tree.space import TREE_SPACES
from conftest import CIFAR_SUBSET, requires_shared_data, run_main, serve_without_project

# 3 blocks (B = 1) of widths 4, 6, 8 on 32x32 CIFAR images: 2 warm-up and
# 2 x 6 joint steps of 32 examples, one GGN Hessian batch. So few steps
# cannot shrink gates to the paper's threshold 1/(2 pi e); it is raised so
# that the update usually prunes some paths and the derivation rules run
# (which paths depends on the run; the rules are unit-tested on hand-set
# masks in test_tree_cell.py).
SEARCH_FLAGS = (
    "--mode=search", "--search_space=treecell_a", "--depth_blocks=1",
    "--alpha=4", "--start_planes=4", f"--dataset=npz:{CIFAR_SUBSET}",
    "--batch_size=32", "--max_train_examples=256", "--max_eval_examples=128",
    "--warmup_fraction=0.25", "--warmup_epochs=1", "--search_epochs=2",
    "--iterations=1", "--lambda_child=0.5", "--learning_rate=0.05",
    "--arch_learning_rate=0.1", "--hessian=ggn", "--hessian_batches=1",
    "--prune_threshold=3.0", "--noprogress",
)
RETRAIN_FLAGS = (
    "--mode=retrain", f"--dataset=npz:{CIFAR_SUBSET}", "--epochs=1",
    "--batch_size=32", "--max_train_examples=256", "--max_eval_examples=128",
    "--learning_rate=0.05", "--weight_decay=1e-4", "--grad_clip=0",
    "--drop_prob=0.1", "--cutout=16", "--model_name=tiny_tree", "--noprogress",
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  if not CIFAR_SUBSET.exists():
    pytest.skip(f"{CIFAR_SUBSET} not present (../shared/data is only on dev/CI machines)")
  base = tmp_path_factory.mktemp("proxyless")
  search_dir, retrain_dir, export_dir = base / "search", base / "retrain", base / "exports"
  result = run_main(*SEARCH_FLAGS, f"--model_dir={search_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  first = (search_dir / "genotype.json").read_text()
  # Rerun in the same directory: the final checkpoint (weights, gates, masks,
  # prior) is restored and the same outputs are written again.
  result = run_main(*SEARCH_FLAGS, f"--model_dir={search_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (search_dir / "genotype.json").read_text() == first
  result = run_main(*RETRAIN_FLAGS, f"--genotype={search_dir}",
                    f"--model_dir={retrain_dir}", f"--export_dir={export_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return search_dir, retrain_dir, export_dir


@requires_shared_data(CIFAR_SUBSET)
def test_search_writes_a_tree_genotype_that_follows_the_posterior(pipeline):
  search_dir, _, _ = pipeline
  genotype = Genotype.load(search_dir / "genotype.json")
  assert isinstance(genotype, TreeGenotype) and genotype.space == "treecell_a"
  assert genotype.backbone.widths == (4, 6, 8)
  assert genotype.search["lambda_child"] == 0.5 and genotype.search["depth_blocks"] == 1
  for name in ("config.json", "flags.txt", "posterior.json"):
    assert (search_dir / name).is_file()
  assert sorted(os.listdir(search_dir / "cells")) == [
      "block_01.dot", "block_02.dot", "block_03.dot"]
  posterior = json.loads((search_dir / "posterior.json").read_text())
  groups = posterior["groups"]
  space = TREE_SPACES["treecell_a"]
  assert len(groups) == 3 * 15 and {g["gate"] for g in groups} == {"path"}
  kept = {(g["cell_type"], g["edge"]): g["kept"] for g in groups}
  for group in groups:
    assert group["kept"] == (group["gamma"] > 3.0) and len(group["w"]) == 1
  # A kept edge's parent is kept (eq. 6 within one update), and the derived
  # cell holds exactly the kept edges that still lead somewhere (rules 1-4).
  parents = {name: parent for name, _, parent, _ in space.template.walk()}
  for (cell_type, edge), is_kept in kept.items():
    if is_kept and parents[edge] is not None:
      assert kept[(cell_type, parents[edge])], (cell_type, edge)
  for index, cell in enumerate(genotype.cells):
    block = f"block_{index + 1:02d}"
    derived = set() if cell is None else {n for n, b, _, _ in cell.walk() if b.ops}
    assert derived <= {e for (t, e), k in kept.items() if t == block and k}
  assert genotype.search["prune_threshold"] == 3.0 > PRUNE_THRESHOLD


@requires_shared_data(CIFAR_SUBSET)
def test_retrain_builds_the_derived_network_and_exports_it(pipeline):
  search_dir, retrain_dir, export_dir = pipeline
  genotype = Genotype.load(search_dir / "genotype.json")
  assert Genotype.load(retrain_dir / "genotype.json") == genotype
  metrics = json.loads((retrain_dir / "metrics.json").read_text())
  assert metrics["epochs"] == 1 and metrics["examples"] == 128
  assert 0.0 <= metrics["accuracy"] <= 1.0
  version = export_dir / "tiny_tree" / "1"
  assert (version / "saved_model.pb").is_file()
  assert Genotype.from_json((version / "assets" / "genotype.json").read_text()) == genotype
  # The derived network has exactly the formula's parameters.
  import tensorflow as tf
  from bayesnas_tf import modes
  from bayesnas_tf.runtime import run_dir
  from bayesnas_tf.runtime.checkpointing import restore_latest, variables_by_path
  config = run_dir.read_config(str(retrain_dir))
  meta = json.loads((retrain_dir / "dataset.json").read_text())
  model = modes.build_child_network(config, genotype, 10, meta["image_shape"])
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == (
      trainable_params(genotype))
  checkpoint = tf.train.Checkpoint(model=variables_by_path(model))
  manager = tf.train.CheckpointManager(checkpoint, str(retrain_dir / "checkpoints"), 1)
  assert restore_latest(checkpoint, manager)
  images = np.load(CIFAR_SUBSET)["x_test"][:8]
  x = (images.astype(np.float32) / 255.0 - meta["mean"]) / meta["std"]
  expected = tf.nn.softmax(model(x, training=False)).numpy()
  # Served by a process that cannot import bayesnas_tf.
  served = serve_without_project(version, images, retrain_dir)
  np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)


def _assert_one_clear_line(result, pattern):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert pattern in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (("--mode=search", "--search_space=trees"),
     "valid search spaces are bayesnas, darts, treecell_a, proxyless"),
    (("--mode=retrain", "--genotype=WRONG_BLOCKS"), "but 53 cells are listed"),
])
def test_bad_input_gets_one_clear_line(tmp_path, args, message):
  if "--genotype=WRONG_BLOCKS" in args:
    from bayesnas_tf.spaces.tree.genotype import BUILTIN_TREE_GENOTYPES
    data = BUILTIN_TREE_GENOTYPES["treecell_a_b18_a84"].to_dict()
    data["cells"].pop()
    (tmp_path / "genotype.json").write_text(json.dumps(data))
    args = ("--mode=retrain", f"--genotype={tmp_path / 'genotype.json'}",
            "--dataset=digits")
  model_dir = tmp_path / "run"
  _assert_one_clear_line(run_main(*args, f"--model_dir={model_dir}"), message)
  assert not model_dir.exists()


@pytest.mark.parametrize("supernet, search, message", [
    ({"search_space": "treecell_a", "depth_blocks": 1, "alpha": 0.0,
      "start_planes": 1}, {}, "every width must be an even number >= 2"),
    ({"search_space": "treecell_a", "alpha": -1.0}, {}, "--alpha must be >= 0"),
    ({"search_space": "treecell_a", "depth_blocks": 0}, {},
     "--depth_blocks must be a positive integer"),
    ({"search_space": "proxyless"}, {"hessian": "diag_backprop"},
     "--hessian=diag_backprop is not available for the tree search space"),
])
def test_bad_tree_configurations(supernet, search, message):
  from bayesnas_tf import config as config_lib
  from bayesnas_tf.errors import ConfigError
  config = config_lib.ExperimentConfig(
      mode="search", supernet=config_lib.SupernetConfig(**supernet),
      search=config_lib.SearchConfig(**search))
  with pytest.raises(ConfigError, match=re.escape(message)):
    config.validate()


def test_flag_files_hold_the_paper_settings():
  from bayesnas_tf import cli as main
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    main.FLAGS([str(root / "main.py"),
                f"--flagfile={root / 'flags' / 'search_proxyless_cifar10.flags'}"])
    search = main.build_config()
    main.FLAGS.unparse_flags()
    main.FLAGS([str(root / "main.py"),
                f"--flagfile={root / 'flags' / 'retrain_proxyless_cifar10.flags'}"])
    retrain = main.build_config()
  finally:
    main.FLAGS.unparse_flags()
  assert (search.supernet.search_space, search.supernet.depth_blocks,
          search.supernet.alpha) == ("treecell_a", 18, 84.0)
  assert (search.data.batch_size, search.search.learning_rate, search.search.momentum,
          search.search.lambda_child, search.search.search_epochs) == (32, 0.1, 0.9, 0.01, 1)
  assert (retrain.data.batch_size, retrain.train.learning_rate,
          retrain.train.lr_schedule, retrain.data.cutout, retrain.train.drop_prob,
          retrain.train.epochs) == (64, 0.1, "cosine", 16, 0.1, 600)
