"""--mode=study: random genotypes, the table, and a tiny end-to-end study that
resumes without redoing finished runs (the real study is not run by CI)."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from bayesnas_tf.modes import study as study_lib
from bayesnas_tf.spaces.registry import resolve_genotype
from bayesnas_tf.spaces.dag import sampling
from bayesnas_tf.spaces.dag.space import BAYESNAS_SPACE, DARTS_SPACE
from conftest import run_main, tree_digest

PRIMITIVES = ("sep3", "max", "avg", "id")


@pytest.mark.parametrize("space", [BAYESNAS_SPACE, DARTS_SPACE], ids=lambda s: s.name)
def test_random_genotypes_match_the_counts_and_read_only_live_nodes(space):
  rng = np.random.default_rng(0)
  seen = set()
  for normal, reduce in [(1, 1), (3, 9), (10, 4), (20, 25)]:
    for _ in range(20):
      genotype = sampling.random_genotype(
          space, PRIMITIVES, {"normal": normal, "reduce": reduce}, rng)
      assert sampling.kept_op_counts(genotype) == {"normal": normal, "reduce": reduce}
      assert not sampling.reads_empty_node(genotype)
      for cell_type in ("normal", "reduce"):
        spec = space.cell(cell_type)
        pairs = [(op, src, f"n{j}") for j, node in enumerate(genotype.cell(cell_type))
                 for op, src in node]
        assert len(set(pairs)) == len(pairs)          # distinct (edge, op)
        for op, src, dst in pairs:
          assert op in PRIMITIVES and (src, dst) in spec.edges
      seen.add(genotype)
  assert len(seen) > 60                               # really random
  a = sampling.random_genotype(space, PRIMITIVES, {"normal": 5, "reduce": 5},
                               np.random.default_rng([1, 2]))
  b = sampling.random_genotype(space, PRIMITIVES, {"normal": 5, "reduce": 5},
                               np.random.default_rng([1, 2]))
  assert a == b                                       # seeded


def test_reads_empty_node_and_counts():
  released = resolve_genotype("bayesnas_l0.01")
  assert sampling.kept_op_counts(released) == {"normal": 10, "reduce": 10}
  assert not sampling.reads_empty_node(released)
  broken = dataclasses.replace(
      released, normal=((),) + released.normal[1:3] + ((("avg", "n0"),),))
  assert sampling.reads_empty_node(broken)


def test_summary_and_table():
  def row(name, group, acc, params):
    return study_lib.RunRecord(name, group, 0, {}, {"normal": 3, "reduce": 4},
                               params, acc, 1.0, "x")
  runs = [row("a", "searched", 0.5, 100), row("b", "searched", 0.7, 300),
          row("c", "random", 0.4, 200), row("d", "released", 0.9, 50)]
  summary = study_lib.summarize(runs)
  assert summary["searched"]["accuracy_mean"] == pytest.approx(0.6)
  assert summary["searched"]["accuracy_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
  assert summary["searched"]["params_mean"] == 200
  assert summary["random"]["accuracy_std"] == 0.0 and summary["random"]["runs"] == 1
  table = study_lib.format_table(runs, summary)
  assert "0.6000 +- 0.1414" in table and "released" in table and "3/4" in table


# --prune_threshold=0.505: this search's op gammas were measured 0.41-0.52
# (normal) and 0.44-0.66 (reduce), so it keeps 1 normal and 9 reduce ops;
# the default 1/(2 pi e) keeps all of a run this short (little evidence).
TINY_STUDY_FLAGS = (
    "--mode=study", "--dataset=digits", "--cells=3", "--channels=4",
    f"--primitives={','.join(PRIMITIVES)}", "--batch_size=32",
    "--max_train_examples=256", "--max_eval_examples=64", "--warmup_fraction=0.25",
    "--search_epochs=1", "--lambda_child=0.1", "--learning_rate=0.05",
    "--crop_padding=1", "--cutout=0", "--prune_threshold=0.505", "--study_seeds=1",
    "--random_per_seed=1", "--retrain_cells=3", "--retrain_channels=4",
    "--retrain_epochs=1", "--retrain_batch_size=32", "--noprogress",
)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("study") / "run"
  result = run_main(*TINY_STUDY_FLAGS, f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


def test_tiny_study_end_to_end(tiny_study):
  model_dir, result = tiny_study
  study = json.loads((model_dir / "study.json").read_text())
  runs = {r["name"]: r for r in study["runs"]}
  assert set(runs) == {"searched_seed0", "random_seed0_0", "released_bayesnas_l0.01"}
  searched, random_run = runs["searched_seed0"], runs["random_seed0_0"]
  # The random genotype has the found genotype's op counts, not its ops.
  assert random_run["kept_ops"] == searched["kept_ops"]
  assert random_run["genotype"]["normal"] != searched["genotype"]["normal"]
  found = json.loads((model_dir / "runs" / "search_seed0" / "genotype.json").read_text())
  assert searched["genotype"]["normal"] == found["normal"]
  for run in runs.values():
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["params"] > 0
    retrain = json.loads((model_dir / "runs" / run["name"] / "config.json").read_text())
    # One identical schedule for every genotype.
    assert (retrain["train"]["cells"], retrain["train"]["channels"],
            retrain["train"]["epochs"], retrain["data"]["batch_size"],
            retrain["runtime"]["seed"]) == (3, 4, 1, 32, 0)
  assert set(study["summary"]) == {"searched", "random", "released"}
  assert "group" in result.stdout and "searched" in result.stdout


def test_study_resumes_without_redoing_finished_runs(tiny_study):
  model_dir, _ = tiny_study
  path = model_dir / "study.json"
  study = json.loads(path.read_text())
  kept = tree_digest(model_dir / "runs" / "searched_seed0")
  # Forget the reference run, as if the study had stopped during it.
  study["runs"] = [r for r in study["runs"] if r["group"] != "released"]
  path.write_text(json.dumps(study))
  result = run_main(*TINY_STUDY_FLAGS, f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  again = json.loads(path.read_text())
  assert {r["name"] for r in again["runs"]} == {
      "searched_seed0", "random_seed0_0", "released_bayesnas_l0.01"}
  assert tree_digest(model_dir / "runs" / "searched_seed0") == kept
  assert "study: retraining searched_seed0" not in result.stderr
  # A study with other settings in the same folder is refused, untouched.
  before = path.read_text()
  changed = [f for f in TINY_STUDY_FLAGS if not f.startswith("--retrain_epochs")]
  refused = run_main(*changed, "--retrain_epochs=2", f"--model_dir={model_dir}")
  assert refused.returncode != 0
  assert refused.stderr.strip().splitlines()[-1].startswith("error:")
  assert path.read_text() == before


# --- studies run apart, merged with --study_parts ---------------------------
SCHEDULE = {"cells": 6, "channels": 12, "epochs": 4, "learning_rate": 0.05,
            "batch_size": 64}


def write_part(folder, seed, accuracies, schedule=None, released=False):
  """A study.json as one `--seed=SEED --study_seeds=1` study writes it."""
  names = [f"searched_seed{seed}"] + [f"random_seed{seed}_{j}"
                                      for j in range(len(accuracies) - 1)]
  groups = ["searched"] + ["random"] * (len(accuracies) - 1)
  if released:
    names, groups = names + ["released_bayesnas_l0.01"], groups + ["released"]
    accuracies = list(accuracies) + [0.48]
  runs = [dataclasses.asdict(study_lib.RunRecord(
      name, group, seed, {"normal": [], "reduce": []}, {"normal": 5, "reduce": 6},
      1000 + 10 * i, acc, 60.0, str(folder / "runs" / name)))
          for i, (name, group, acc) in enumerate(zip(names, groups, accuracies))]
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "study.json").write_text(json.dumps({
      "schema_version": study_lib.STUDY_SCHEMA_VERSION, "dataset": "npz:x.npz",
      "schedule": dict(schedule or SCHEDULE, seed=seed), "runs": runs,
      "summary": {}}))
  return folder


def merge_config(model_dir, parts):
  from bayesnas_tf import config as config_lib
  return config_lib.config_from_values("study", {
      "model_dir": str(model_dir), "study_parts": [str(p) for p in parts]})


def test_merge_studies_pools_the_parts(tmp_path):
  parts = [write_part(tmp_path / "s0", 0, [0.50, 0.55, 0.53], released=True),
           write_part(tmp_path / "s1", 1, [0.60, 0.52, 0.54]),
           write_part(tmp_path / "s2", 2, [0.58, 0.51, 0.57])]
  result = study_lib.merge_studies(merge_config(tmp_path / "merged", parts))
  merged = json.loads((tmp_path / "merged" / "study.json").read_text())
  assert [r["name"] for r in merged["runs"]] == [
      "searched_seed0", "random_seed0_0", "random_seed0_1", "released_bayesnas_l0.01",
      "searched_seed1", "random_seed1_0", "random_seed1_1",
      "searched_seed2", "random_seed2_0", "random_seed2_1"]
  assert merged["schedule"] == dict(SCHEDULE, seeds=[0, 1, 2])
  assert merged["parts"] == [str(p) for p in parts]
  searched = merged["summary"]["searched"]
  assert searched["runs"] == 3
  assert searched["accuracy_mean"] == pytest.approx(np.mean([0.50, 0.60, 0.58]))
  assert searched["accuracy_std"] == pytest.approx(np.std([0.50, 0.60, 0.58], ddof=1))
  assert merged["summary"]["random"]["accuracy_mean"] == pytest.approx(
      np.mean([0.55, 0.53, 0.52, 0.54, 0.51, 0.57]))
  assert merged["summary"]["released"]["runs"] == 1
  assert result.summary == merged["summary"]
  assert (tmp_path / "merged" / "config.json").exists()


@pytest.mark.parametrize("case", ["missing", "schedule", "dataset", "twice",
                                  "itself", "schema"])
def test_merge_studies_refuses_parts_that_cannot_share_a_table(tmp_path, case):
  from bayesnas_tf.errors import ConfigError
  first = write_part(tmp_path / "s0", 0, [0.5, 0.6], released=True)
  target = tmp_path / "merged"
  if case == "missing":
    second, expected = tmp_path / "nothing", "holds no study.json"
  elif case == "schedule":
    second = write_part(tmp_path / "s1", 1, [0.5, 0.6], dict(SCHEDULE, epochs=5))
    expected = "schedule.epochs: 4 -> 5"
  elif case == "dataset":
    second = write_part(tmp_path / "s1", 1, [0.5, 0.6])
    study = json.loads((second / "study.json").read_text())
    (second / "study.json").write_text(json.dumps(dict(study, dataset="digits")))
    expected = "dataset: 'npz:x.npz' -> 'digits'"
  elif case == "twice":
    second = write_part(tmp_path / "s1", 1, [0.5, 0.6], released=True)
    expected = "run released_bayesnas_l0.01 is in both"
  elif case == "itself":
    second, target, expected = first, first, "is --model_dir itself"
  else:
    second = write_part(tmp_path / "s1", 1, [0.5, 0.6])
    study = json.loads((second / "study.json").read_text())
    (second / "study.json").write_text(json.dumps(dict(study, schema_version=99)))
    expected = "schema_version 99"
  before = (first / "study.json").read_text()
  with pytest.raises(ConfigError, match=expected):
    study_lib.merge_studies(merge_config(target, [first, second]))
  assert (first / "study.json").read_text() == before
  if case != "itself":
    assert not target.exists()      # refused before anything is written


def test_study_parts_from_the_command_line(tiny_study, tmp_path):
  model_dir, _ = tiny_study
  # The tiny study is one part; a second part as a --seed=1 study would
  # write it (same dataset and schedule, no released row).
  study = json.loads((model_dir / "study.json").read_text())
  second = tmp_path / "seed1"
  second.mkdir()
  rows = [dict(r, name=r["name"].replace("seed0", "seed1"), search_seed=1,
               test_accuracy=0.25)
          for r in study["runs"] if r["group"] != "released"]
  (second / "study.json").write_text(json.dumps(dict(
      study, runs=rows, schedule=dict(study["schedule"], seed=1))))
  merged = tmp_path / "merged"
  result = run_main("--mode=study", f"--study_parts={model_dir},{second}",
                    f"--model_dir={merged}", "--noprogress")
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.loads((merged / "study.json").read_text())
  assert len(table["runs"]) == 5 and table["summary"]["searched"]["runs"] == 2
  assert "searched_seed1" in result.stdout and "group" in result.stdout
  refused = run_main("--mode=study", f"--study_parts={model_dir},{tmp_path / 'none'}",
                     f"--model_dir={tmp_path / 'other'}", "--noprogress")
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines()[-1].startswith("error: --study_parts:")
  assert not (tmp_path / "other").exists()


def test_study_flag_file_with_the_nb201_settings(monkeypatch):
  """The carried-back study is the CPU study with four search settings
  changed and nothing else (its nested flag file is read from the root)."""
  from bayesnas_tf import cli
  root = pathlib.Path(__file__).resolve().parents[1]
  monkeypatch.chdir(root)
  configs = {}
  for name in ("study_cifar10_cpu", "study_cifar10_cpu_nb201"):
    try:
      cli.FLAGS(["main.py", f"--flagfile=flags/{name}.flags"])
      configs[name] = cli.build_config()
    finally:
      cli.FLAGS.unparse_flags()
  base, nb201 = configs["study_cifar10_cpu"], configs["study_cifar10_cpu_nb201"]
  assert (nb201.search.warmup_fraction, nb201.search.warmup_epochs,
          nb201.search.search_epochs, nb201.data.batch_size) == (0.5, 8, 3, 64)
  assert (base.search.warmup_fraction, base.search.warmup_epochs,
          base.search.search_epochs, base.data.batch_size) == (0.2, 1, 1, 32)
  changed = dataclasses.replace(
      nb201, data=dataclasses.replace(nb201.data, batch_size=32),
      search=dataclasses.replace(
          nb201.search, warmup_fraction=0.2, warmup_epochs=1, search_epochs=1),
      runtime=dataclasses.replace(nb201.runtime, model_dir=base.runtime.model_dir))
  assert changed == base
