"""The Python API: every mode of main.py as a function, for notebooks and scripts.

    from bayesnas_tf import api

    found = api.search(dataset="digits", model_dir="runs/nb_search")
    print(found.test_accuracy, found.ops, found.warnings)
    trained = api.retrain(genotype=found.model_dir, dataset="digits",
                          cells=5, channels=16, epochs=10,
                          model_dir="runs/nb_retrain")

Each function takes keyword options with the names of the flags of main.py
(`cells=5` is `--cells=5`) on top of the mode's defaults (and its dataset's,
e.g. the quick-start sizes of digits), or an `ExperimentConfig` (with
options applied on top of it), validates them exactly as the command line
does (`config.config_from_values`, the mapping main.py uses; a bad value
raises `ConfigError` with the same message), runs the mode like
`python main.py --mode=...`, writes the same files to `model_dir`
(`flags.txt` holds the options as flags, so the run can be repeated with
`python main.py --flagfile=<model_dir>/flags.txt`), and returns the mode's
result object. TensorFlow is imported on the first call, not on import.

The functions are also available as `bayesnas_tf.run_search`, ... (the
package's subpackages `bayesnas_tf.search`, `.compress` and `.export`
already own the bare names).
"""

from __future__ import annotations

from typing import Any, Mapping


def _flags_text(mode: str, options: Mapping[str, Any]) -> str:
  """The options as a flag file (what main.py would have been given)."""
  lines = [f"--mode={mode}"]
  for name, value in sorted(options.items()):
    if value is None:
      continue
    if isinstance(value, bool):
      lines.append(f"--{name}" if value else f"--no{name}")
    elif isinstance(value, (list, tuple)):
      lines.append(f"--{name}={','.join(str(v) for v in value)}")
    else:
      lines.append(f"--{name}={value}")
  return "\n".join(lines) + "\n"


def make_config(mode: str, config=None, **options):
  """The validated `ExperimentConfig` that `mode` would run with.

  Args:
    mode: one of config.MODES ("search", "retrain", ...).
    config: an `ExperimentConfig` to start from instead of the defaults; its
      mode must be `mode`.
    **options: flag names and values, e.g. `cells=5, lambda_child=0.05`.

  Raises:
    ConfigError: an unknown option, a wrong type or an invalid value.
  """
  from bayesnas_tf import config as config_lib  # pylint: disable=import-outside-toplevel
  if config is not None:
    if not isinstance(config, config_lib.ExperimentConfig):
      raise config_lib.ConfigError(
          f"config must be an ExperimentConfig; received {type(config).__name__}")
    if config.mode != mode:
      raise config_lib.ConfigError(
          f"{mode}() runs --mode={mode}; the config passed is of "
          f"mode={config.mode!r}")
  return config_lib.config_from_values(mode, options, base=config)


def _run(mode: str, config, options: Mapping[str, Any]):
  from bayesnas_tf import modes  # pylint: disable=import-outside-toplevel
  resolved = make_config(mode, config, **options)
  flags_text = _flags_text(mode, options) if config is None else ""
  return modes.run(resolved, flags_text)


def search(config=None, **options):
  """Runs a BayesNAS search (`--mode=search`); returns its `SearchResult`
  (genotype, test_accuracy of the pruned supernet, accuracy_before_pruning,
  ops kept/total per cell type, warnings, paths)."""
  return _run("search", config, options)


def retrain(config=None, **options):
  """Trains the network of a genotype (`--mode=retrain`; `genotype=` a
  built-in name, a genotype.json or a search's model_dir) and exports it;
  returns its `TrainResult` (test_accuracy, export_path, ...)."""
  return _run("retrain", config, options)


def transfer(config=None, **options):
  """The ImageNet network of a genotype (`--mode=transfer`); returns its
  `TrainResult`."""
  return _run("transfer", config, options)


def compress(config=None, **options):
  """Bayesian structured pruning of a CNN (`--mode=compress`); returns its
  `CompressResult` (report, slim_model, export_path, ...)."""
  return _run("compress", config, options)


def export(config=None, **options) -> str:
  """Exports the trained model of a retrain/transfer `model_dir` as the
  next SavedModel version (`--mode=export`); returns its path."""
  return _run("export", config, options)
