"""ExperimentConfig: validation messages and the config.json round trip."""

import dataclasses
import json

import pytest

from bayesnas_tf import config as config_lib
from bayesnas_tf.errors import ConfigError


def test_round_trip():
  config = config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset="npz:/x.npz", batch_size=64),
      supernet=config_lib.SupernetConfig(cells=5, primitives=("sep3", "id")),
      search=config_lib.SearchConfig(lambda_child=0.005, hessian="ggn_mc"),
      runtime=config_lib.RuntimeConfig(model_dir="runs/x", seed=3)).validate()
  revived = config_lib.ExperimentConfig.from_dict(json.loads(config.to_json()))
  assert revived == config
  assert json.loads(config.to_json())["schema_version"] == 1


@pytest.mark.parametrize("section, field, value, message", [
    ("search", "lambda_child", 0.0, "--lambda_child must be > 0"),
    ("search", "lambda_origin", -1.0, "--lambda_origin must be > 0"),
    ("search", "learning_rate", float("nan"), "--learning_rate must be > 0"),
    ("search", "momentum", 1.0, "--momentum must be in"),
    ("search", "warmup_fraction", 1.0, "--warmup_fraction must be in"),
    ("search", "hessian", "diag", "--hessian must be one of"),
    ("search", "dependency", "both", "--dependency must be one of"),
    ("search", "iterations", 0, "--iterations must be > 0"),
    ("data", "batch_size", 0, "--batch_size must be > 0"),
    ("data", "dataset", "", "--dataset must not be empty"),
    ("supernet", "channels", 0, "--channels must be > 0"),
    ("supernet", "primitives", ("sep3", "zero"), "unknown primitive"),
    ("runtime", "strategy", "tpu_pod", "--strategy must be one of"),
    ("runtime", "inter_op_threads", -1, "--inter_op_threads must be >= 0"),
    ("runtime", "intra_op_threads", -2, "--intra_op_threads must be >= 0"),
])
def test_validation_messages(section, field, value, message):
  base = config_lib.ExperimentConfig()
  bad = dataclasses.replace(
      base, **{section: dataclasses.replace(getattr(base, section), **{field: value})})
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    bad.validate()


def test_unknown_fields_are_rejected():
  with pytest.raises(ConfigError, match="unknown field"):
    config_lib.ExperimentConfig.from_dict({"mode": "search", "search": {"lamda": 1}})
  with pytest.raises(ConfigError, match="unknown configuration section"):
    config_lib.ExperimentConfig.from_dict({"mode": "search", "trainer": {}})


def test_lambda_origin_defaults_to_lambda_child():
  assert config_lib.SearchConfig(lambda_child=0.007).effective_lambda_origin == 0.007
  assert config_lib.SearchConfig(lambda_origin=0.02).effective_lambda_origin == 0.02


def test_fingerprint_ignores_evaluation_only_fields():
  a = config_lib.ExperimentConfig()
  b = dataclasses.replace(a, data=dataclasses.replace(a.data, eval_batch_size=7),
                          runtime=dataclasses.replace(a.runtime, checkpoint_every=3))
  c = dataclasses.replace(a, data=dataclasses.replace(a.data, batch_size=7))
  assert a.fingerprint() == b.fingerprint()
  assert a.fingerprint() != c.fingerprint()


def test_only_the_running_mode_sections_are_validated():
  # A flag sets its field in every section that has one; --hessian=exact is
  # valid for the search but not for compression, which has no HVP oracle.
  both = dict(search=config_lib.SearchConfig(hessian="exact"),
              compress=config_lib.CompressConfig(hessian="exact"))
  config = config_lib.ExperimentConfig(mode="search", **both).validate()
  assert config.search.hessian == "exact"
  with pytest.raises(ConfigError, match="--hessian must be one of"):
    config_lib.ExperimentConfig(mode="compress", **both).validate()
