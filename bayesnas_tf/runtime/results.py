"""result.json: the final figures of a run, for scripts that should not parse logs.

Every mode writes `<model_dir>/result.json` (atomically) when it finishes:
the mode, the wall time and the fields of the mode's result object that JSON
can hold (a search: test_accuracy of the pruned supernet,
accuracy_before_pruning, kept/total ops per cell type, warnings, the
genotype and the paths; retrain/transfer: test accuracy, epochs, the
metrics and SavedModel paths; compress: the compression report and paths).
`--mode=export` runs on a trained run's --model_dir, so it adds its
SavedModel path to that run's result.json (`export_path`, and every export
in `exports`) instead of replacing its figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.io_utils import atomic_write_text

RESULT_FILE = "result.json"
RESULT_SCHEMA_VERSION = 1


def _json_value(value) -> Any:
  """`value` in JSON form, or None for what has none (e.g. a Keras model)."""
  if hasattr(value, "result_json"):  # A genotype with a shorter form (nb201).
    return value.result_json()
  if hasattr(value, "to_dict"):  # The genotype of any search-space family.
    return value.to_dict()
  try:
    return json.loads(json.dumps(value))
  except (TypeError, ValueError):
    return None


def result_dict(config: ExperimentConfig, result, wall_time_s: float) -> Dict[str, Any]:
  """The result.json content of a finished mode."""
  values: Dict[str, Any] = {
      "schema_version": RESULT_SCHEMA_VERSION, "mode": config.mode,
      "model_dir": config.runtime.model_dir,
      "wall_time_s": round(float(wall_time_s), 3),
  }
  if dataclasses.is_dataclass(result):
    for field in dataclasses.fields(result):
      value = _json_value(getattr(result, field.name))
      if value is not None or getattr(result, field.name) is None:
        values[field.name] = value
  elif result is not None:
    values["result"] = _json_value(result)
  return values


def write_result(config: ExperimentConfig, result, wall_time_s: float) -> str:
  """Writes <model_dir>/result.json; returns its path."""
  path = os.path.join(config.runtime.model_dir, RESULT_FILE)
  if config.mode == "export":
    values = read_result(config.runtime.model_dir)
    exports = values.get("exports") or (
        [values["export_path"]] if values.get("export_path") else [])
    values.update(export_path=result, exports=exports + [result],
                  export_wall_time_s=round(float(wall_time_s), 3))
  else:
    values = result_dict(config, result, wall_time_s)
  atomic_write_text(path, json.dumps(values, indent=2, sort_keys=True))
  return path


def read_result(model_dir: str) -> Dict[str, Any]:
  """The result.json of `model_dir`, or {} when it has none."""
  path = os.path.join(model_dir, RESULT_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)
