"""Artifacts written before the package layout changed still load (issue 19).

tests/fixtures/legacy/ holds files written by the code at d99db18 (the
README there says how): `.keras` models of a ChildNetwork, a SuperNet and a
PyramidTreeNet with their outputs on fixed inputs, a DAG and a tree
genotype.json, and a finished tiny retrain run (config.json, genotype.json,
dataset.json, checkpoints/) with the probabilities its export served.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

from bayesnas_tf import api
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.registry import resolve_genotype
from bayesnas_tf.spaces.dag.child_net import ChildNetwork
from bayesnas_tf.spaces.tree.pyramid_tree import PyramidTreeNet
from bayesnas_tf.spaces.dag.supernet import SuperNet
from conftest import ROOT

LEGACY = ROOT / "tests" / "fixtures" / "legacy"
MODELS = ("child_network", "supernet", "pyramid_tree")


def test_keras_files_load_and_predict_as_written():
  # Keras finds our classes by their registered names ("bayesnas_tf>..."),
  # which importing the modules that define them registers.
  import keras  # pylint: disable=g-import-not-at-top
  assert ChildNetwork and SuperNet and PyramidTreeNet
  outputs = np.load(LEGACY / "outputs.npz")
  for name in MODELS:
    model = keras.saving.load_model(LEGACY / f"{name}.keras")
    np.testing.assert_allclose(model(outputs["inputs"], training=False).numpy(),
                               outputs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_genotype_files_load():
  dag = resolve_genotype(str(LEGACY / "genotype_dag.json"))
  assert dag == KNOWN_GENOTYPES["bayesnas_l0.007"]
  tree = resolve_genotype(str(LEGACY / "genotype_tree.json"))
  assert tree.to_dict() == json.loads((LEGACY / "genotype_tree.json").read_text())
  assert resolve_genotype(str(LEGACY / "retrain_run")) == (
      KNOWN_GENOTYPES["bayesnas_l0.01"])


def test_finished_retrain_run_exports_what_it_served(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  run = tmp_path / "retrain_run"
  shutil.copytree(LEGACY / "retrain_run", run)
  path = api.export(model_dir=str(run), export_dir=str(tmp_path / "export"),
                    model_name="legacy")
  assert pathlib.Path(path) == tmp_path / "export" / "legacy" / "1"
  outputs = np.load(LEGACY / "outputs.npz")
  served = tf.saved_model.load(path).signatures["serving_default"](
      images=tf.constant(outputs["retrain_images"]))
  np.testing.assert_allclose(served["probabilities"].numpy(),
                             outputs["retrain_probabilities"], rtol=1e-5,
                             atol=1e-6)
