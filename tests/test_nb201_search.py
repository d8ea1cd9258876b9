"""The NB201 search from the command line: a tiny search (C = 4, one cell
per stage) that writes the benchmark string and looks it up, its retrain and
export served without the project's code, --summary_only, and bad input."""

import json

import numpy as np
import pytest

from bayesnas_tf.config import PRUNE_THRESHOLD
from bayesnas_tf.spaces.nb201.genotype import NB201Genotype, trainable_params
from bayesnas_tf.spaces.registry import resolve_genotype
from conftest import CIFAR_SUBSET, SHARED_DATA, requires_shared_data, run_main
from conftest import serve_without_project

TABLE = SHARED_DATA / "nb201_cifar10.csv"
SEARCH_FLAGS = (
    "--mode=search", "--search_space=nb201", "--cells=1", "--channels=4",
    f"--dataset=npz:{CIFAR_SUBSET}", "--batch_size=32",
    "--max_train_examples=320", "--max_eval_examples=64",
    "--warmup_fraction=0.2", "--warmup_epochs=1", "--search_epochs=1",
    "--hessian_batches=1", "--lambda_child=0.05", "--noprogress",
)
ALL_C3 = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
          "|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  if not (CIFAR_SUBSET.exists() and TABLE.exists()):
    pytest.skip(f"{SHARED_DATA} not present (../shared/data is only on dev/CI "
                "machines)")
  base = tmp_path_factory.mktemp("nb201")
  search_dir, retrain_dir, export_dir = base / "search", base / "retrain", base / "exports"
  result = run_main(*SEARCH_FLAGS, f"--benchmark_table={TABLE}",
                    f"--model_dir={search_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  retrain = run_main(
      "--mode=retrain", f"--genotype={search_dir}", f"--dataset=npz:{CIFAR_SUBSET}",
      "--cells=1", "--channels=4", "--epochs=1", "--batch_size=32",
      "--max_train_examples=64", "--max_eval_examples=32", "--noprogress",
      f"--model_dir={retrain_dir}", f"--export_dir={export_dir}")
  assert retrain.returncode == 0, retrain.stderr[-3000:]
  return search_dir, retrain_dir, export_dir, result


@requires_shared_data(TABLE)
def test_search_writes_the_benchmark_string_and_looks_it_up(pipeline):
  search_dir, _, _, result = pipeline
  saved = json.loads((search_dir / "genotype.json").read_text())
  assert saved["kind"] == "nb201"
  genotype = NB201Genotype.from_string(saved["arch"])
  assert saved["search"]["op_score"] == "snr"   # the family's default
  assert saved["search"]["cells_per_stage"] == 1
  summary = json.loads((search_dir / "result.json").read_text())
  assert summary["genotype"] == genotype.arch
  # The looked-up figures are the table's own.
  rows = dict(line.rsplit(",", 1) for line in TABLE.read_text().splitlines()[1:])
  accuracy = float(rows[genotype.arch])
  benchmark = summary["benchmark"]
  assert benchmark["accuracy"] == pytest.approx(accuracy)
  values = np.array([float(v) for v in rows.values()])
  expected = 100 * ((values < accuracy).sum() + 0.5 * (values == accuracy).sum()) / len(values)
  assert benchmark["percentile"] == pytest.approx(expected, abs=1e-3)
  assert benchmark["table"] == str(TABLE)
  assert f"benchmark: {genotype.arch}" in result.stderr
  # One op per edge; the posterior holds 6 edges x (4 ops + w_all) groups,
  # each with one value per cell (3 cells share the type).
  posterior = json.loads((search_dir / "posterior.json").read_text())
  assert len(posterior["groups"]) == 30
  assert all(len(g["w"]) == 3 for g in posterior["groups"])
  # The entropy rule on gates in units of their w(0) = 1/4.
  assert posterior["gate_init"] == 0.25
  assert posterior["threshold"] == pytest.approx(PRUNE_THRESHOLD / 4)
  for group in posterior["groups"]:
    assert group["kept"] == (group["gamma"] > posterior["threshold"])
  kept = {(g["edge"], g["gate"]) for g in posterior["groups"] if g["kept"]}
  edges = ("0->1", "0->2", "1->2", "0->3", "1->3", "2->3")
  for edge, op in zip(edges, genotype.ops):
    if op != "none":
      assert (edge, op) in kept and (edge, "all") in kept
  assert (search_dir / "cells" / "cell.dot").is_file()


@requires_shared_data(TABLE)
def test_retrain_and_export_the_found_cell(pipeline):
  search_dir, retrain_dir, export_dir, _ = pipeline
  genotype = resolve_genotype(str(search_dir))
  assert resolve_genotype(str(retrain_dir)) == genotype
  version = export_dir / "nb201" / "1"
  assert (version / "saved_model.pb").is_file()
  config = json.loads((retrain_dir / "config.json").read_text())
  # The genotype kind brings the benchmark's recipe; flags override it.
  assert config["train"]["weight_decay"] == 5e-4
  assert config["train"]["drop_prob"] == 0.0
  assert config["train"]["cells"] == 1
  images = np.load(CIFAR_SUBSET)["x_test"][:4]
  probabilities = serve_without_project(version, images, retrain_dir)
  assert probabilities.shape == (4, 10)
  np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-4)


def test_summary_only_counts_the_benchmark_network():
  result = run_main("--mode=retrain", f"--genotype={ALL_C3}", "--dataset=cifar10",
                    "--summary_only")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trainable_params: 1531546" in result.stdout
  assert trainable_params(NB201Genotype.from_string(ALL_C3)) == 1531546


def _assert_one_clear_line(result, pattern):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert pattern in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (("--benchmark_table=/nonexistent/table.csv",), "no such file"),
    (("--benchmark_table=BAD",), "one of them 'arch'"),
    (("--search_space=bayesnas", "--benchmark_table=BAD"),
     "--benchmark_table looks up the cells of a space with a benchmark (nb201)"),
    (("--hessian=diag_backprop",), "not available for the nb201 search space"),
    (("--cells=0",), "--cells must be > 0"),
])
def test_bad_input_gets_one_clear_line(tmp_path, args, message):
  bad = tmp_path / "bad.csv"
  bad.write_text("cell,accuracy\nx,1\n")
  args = tuple(a.replace("BAD", str(bad)) for a in args)
  model_dir = tmp_path / "run"
  result = run_main("--mode=search", "--search_space=nb201", "--dataset=digits",
                    *args, f"--model_dir={model_dir}")
  _assert_one_clear_line(result, message)
  assert not (model_dir / "checkpoints").exists()


def test_a_bad_genotype_string_is_one_clear_line():
  result = run_main("--mode=retrain", "--genotype=|nor_conv_3x3~0|+|none~0|",
                    "--summary_only")
  _assert_one_clear_line(result, "lists 3 nodes separated by '+'")


def test_search_defaults_are_the_readme_recipe_and_the_paper_is_one_flag():
  import pathlib  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import api  # pylint: disable=g-import-not-at-top
  from bayesnas_tf import cli  # pylint: disable=g-import-not-at-top

  def recipe(config):
    return (config.supernet.cells, config.supernet.channels, config.data.batch_size,
            config.search.warmup_fraction, config.search.warmup_epochs,
            config.search.search_epochs, config.search.op_score,
            config.supernet.bn_affine, config.supernet.gate_init)

  ours = api.make_config("search", search_space="nb201", dataset="digits")
  assert recipe(ours) == (5, 16, 64, 0.5, 8, 3, "snr", None, None)
  # A given flag beats the family's default; other families keep theirs.
  given = api.make_config("search", search_space="nb201", dataset="digits",
                          op_score="gamma", warmup_epochs=2, batch_size=16)
  assert recipe(given)[2:7] == (16, 0.5, 2, 3, "gamma")
  dag = api.make_config("search", dataset="digits")
  assert (dag.search.op_score, dag.search.warmup_epochs) == ("gamma", 2)
  flag_file = pathlib.Path(__file__).resolve().parents[1] / "flags" / "search_nb201_paper.flags"
  try:
    cli.FLAGS(["main.py", f"--flagfile={flag_file}"])
    paper = cli.build_config()
  finally:
    cli.FLAGS.unparse_flags()
  assert recipe(paper) == (5, 16, 18, 0.1, 1, 1, "gamma", True, None)
  assert (paper.search.learning_rate, paper.search.hessian_batches,
          paper.data.cutout) == (0.1, 1, 16)
