"""The Python API (issue 10, item 2): options validated as the command line
validates flags, the per-dataset defaults, and the README's "Python API"
block executed (with tiny sizes) so it cannot rot."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from bayesnas_tf import api
from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import ConfigError
from conftest import ROOT

# Sizes that let the README block run in a test; they are added to (and
# win over) what the block passes.
TINY = {
    "search": dict(cells=3, channels=4, primitives="max,id",
                   max_train_examples=96, max_eval_examples=64, batch_size=16,
                   warmup_fraction=0.4, warmup_epochs=1, search_epochs=1,
                   hessian_batches=1, progress=False),
    "retrain": dict(cells=3, channels=4, epochs=1, max_train_examples=64,
                    max_eval_examples=64, batch_size=32, progress=False),
    "export": {},
}


def test_import_is_light():
  # Genotypes too: main.py checks --genotype before TensorFlow loads.
  code = ("import sys, bayesnas_tf; from bayesnas_tf import api; "
          "from bayesnas_tf.spaces.registry import resolve_genotype; "
          "resolve_genotype('bayesnas_l0.01'); resolve_genotype('proxyless_g_cifar'); "
          "bayesnas_tf.run_search; print('tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "False"


@pytest.mark.parametrize("options, message", [
    ({"lambda_child": 0}, "--lambda_child must be > 0"),
    ({"cells": 2}, "--cells must be at least 3"),
    ({"cells": "5"}, "--cells must be an integer; received cells='5'"),
    ({"flip": 1}, "--flip must be True or False"),
    ({"primitives": "sep3,foo"}, "unknown primitive(s) foo"),
    ({"celss": 5}, "unknown option(s) celss"),
    ({"search_space": "nas"}, "unknown search space 'nas'"),
])
def test_options_are_validated_like_flags(options, message):
  with pytest.raises(ConfigError) as error:
    api.make_config("search", **options)
  assert message in str(error.value)


def test_digits_bring_quick_start_defaults_that_options_override():
  quick = api.make_config("search")
  assert quick.data.dataset == "digits"
  assert (quick.supernet.cells, quick.data.cutout, quick.data.flip) == (5, 0, False)
  assert quick.runtime.model_dir == "runs/quickstart"
  assert api.make_config("search", cells=4).supernet.cells == 4
  # Another dataset keeps the paper's settings.
  paper = api.make_config("search", dataset="cifar10")
  assert (paper.supernet.cells, paper.data.batch_size, paper.data.cutout) == (8, 18, 16)
  assert api.make_config("retrain", dataset="digits").train.cells == 5
  assert api.make_config("retrain").train.cells == 20


def test_main_and_the_api_build_the_same_config():
  # One `main` module per process: its flags live in absl's global
  # FlagValues, and a second copy would define them twice.
  from bayesnas_tf import cli as main  # pylint: disable=g-import-not-at-top
  main.FLAGS.unparse_flags()
  main.FLAGS(["main.py", "--mode=search", "--cells=4", "--lambda_child=0.02",
              "--primitives=sep3,max", "--noflip"])
  try:
    from_flags = main.build_config()
  finally:
    main.FLAGS.unparse_flags()
  from_api = api.make_config("search", cells=4, lambda_child=0.02,
                             primitives=["sep3", "max"], flip=False)
  assert from_flags == from_api


def test_config_objects_and_options_on_top():
  base = api.make_config("search", cells=4)
  assert isinstance(base, ExperimentConfig)
  on_top = api.make_config("search", base, seed=3)
  assert on_top.runtime.seed == 3 and on_top.supernet.cells == 4
  assert on_top.search == base.search and on_top.data == base.data
  with pytest.raises(ConfigError, match="runs --mode=retrain"):
    api.make_config("retrain", base)


def _readme_block(section: str) -> str:
  text = (ROOT / "README.md").read_text()
  body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", body, re.S)
  assert len(blocks) == 1, f"one python block expected in '{section}'"
  return blocks[0]


def test_readme_python_api_block_runs(tmp_path, monkeypatch):
  calls = []
  for mode, tiny in TINY.items():
    real = getattr(api, mode)

    def tiny_run(config=None, _real=real, _mode=mode, _tiny=tiny, **options):
      calls.append((_mode, dict(options)))
      return _real(config, **{**options, **_tiny})

    monkeypatch.setattr(api, mode, tiny_run)
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_readme_block("Python API"), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert [mode for mode, _ in calls] == ["search", "retrain", "export"]
  found, trained = namespace["found"], namespace["trained"]
  assert 0.0 <= found.test_accuracy <= 1.0 and set(found.ops) == {"normal", "reduce"}
  assert pathlib.Path(found.genotype_path).is_file()
  assert pathlib.Path(trained.export_path).is_dir()
  # Every mode left its figures in result.json; export added its version.
  search_result = json.loads((tmp_path / "runs/api_search/result.json").read_text())
  assert search_result["test_accuracy"] == pytest.approx(found.test_accuracy)
  retrain_result = json.loads((tmp_path / "runs/api_retrain/result.json").read_text())
  assert retrain_result["test_accuracy"] == pytest.approx(trained.test_accuracy)
  assert len(retrain_result["exports"]) == 2
  assert retrain_result["export_path"] == namespace["exported"]
  # flags.txt holds the options as flags: the run repeats from the CLI.
  flags = (tmp_path / "runs/api_search/flags.txt").read_text().splitlines()
  assert "--mode=search" in flags and "--cells=3" in flags
