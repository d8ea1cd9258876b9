"""`ExperimentConfig`: every section of one run, and configs from options.

The library never reads flags: every entry point takes an `ExperimentConfig`
(flags -> config -> validate -> freeze -> `config.json`, STYLE.md 14). Each
mode reads (and validates) only its own sections (`MODE_SECTIONS`);
`config_from_values` is the one mapping from flat option names (the flags of
the command line, the keyword arguments of `bayesnas_tf.api`) to sections.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional, Tuple

from bayesnas_tf.config.checks import check_choice
from bayesnas_tf.config.compress import CompressConfig
from bayesnas_tf.config.data import DataConfig
from bayesnas_tf.config.runtime import RuntimeConfig
from bayesnas_tf.config.search import SearchConfig
from bayesnas_tf.config.search import SupernetConfig
from bayesnas_tf.config.study import StudyConfig
from bayesnas_tf.config.train import ExportConfig
from bayesnas_tf.config.train import TrainConfig
from bayesnas_tf.errors import BayesNASError, ConfigError
from bayesnas_tf.spaces import registry

MODES = ("search", "retrain", "transfer", "compress", "export", "study")
CONFIG_SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  mode: str = "search"
  data: DataConfig = DataConfig()
  supernet: SupernetConfig = SupernetConfig()
  search: SearchConfig = SearchConfig()
  train: TrainConfig = TrainConfig()
  compress: CompressConfig = CompressConfig()
  export: ExportConfig = ExportConfig()
  runtime: RuntimeConfig = RuntimeConfig()
  study: StudyConfig = StudyConfig()

  def validate(self) -> "ExperimentConfig":
    check_choice("mode", self.mode, MODES)
    # Only the sections this mode reads: a flag sets its field in every
    # section that has one (e.g. --hessian in search and compress), and a
    # value valid for the running mode may be invalid for another one
    # (--mode=search --hessian=exact, which compress does not offer).
    for section in MODE_SECTIONS[self.mode]:
      getattr(self, section).validate()
    if self.mode == "search":
      space = self.supernet.search_space
      registry.get_family(space).check_hessian(space, self.search.hessian)
      if self.runtime.strategy == "tpu" and self.search.hessian == "exact":
        # One eager Hessian-vector product per gate; a TPU runs compiled steps.
        raise ConfigError("--hessian=exact runs eagerly and cannot run on a TPU; "
                          "use --hessian=ggn")
    if self.mode == "study" and self.runtime.strategy == "multi_worker_mirrored":
      # A process joins a cluster once; a study starts one run after another.
      raise ConfigError("--mode=study cannot run on --strategy=multi_worker_mirrored; "
                        "run its searches and retrainings as --mode=search/retrain "
                        "on the cluster")
    return self

  def to_dict(self) -> Dict[str, Any]:
    result = dataclasses.asdict(self)
    result["schema_version"] = CONFIG_SCHEMA_VERSION
    return result

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> "ExperimentConfig":
    values = dict(values)
    values.pop("schema_version", None)
    sections = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
      if key not in sections:
        raise ConfigError(f"unknown configuration section {key!r}")
      if key == "mode":
        kwargs[key] = value
        continue
      section_cls = SECTIONS[key]
      field_names = {f.name for f in dataclasses.fields(section_cls)}
      unknown = set(value) - field_names
      if unknown:
        raise ConfigError(
            f"unknown field(s) {sorted(unknown)} in configuration section {key!r}")
      section = dict(value)
      for name in ("primitives", "groups", "study_reference", "study_parts"):
        if name in section:
          section[name] = tuple(section[name])
      kwargs[key] = section_cls(**section)
    return cls(**kwargs)

  def fingerprint(self) -> Dict[str, Any]:
    """What a run's checkpoints depend on; resuming needs an exact match.

    The data settings (without evaluation-only fields), the mode's own
    section(s) and the seed.
    """
    data = dataclasses.asdict(self.data)
    for evaluation_only in ("eval_batch_size", "max_eval_examples"):
      data.pop(evaluation_only)
    sections = {"search": ("supernet", "search"), "retrain": ("train",),
                "transfer": ("train",), "compress": ("compress",),
                "study": ("supernet", "search", "train", "study"),
                }.get(self.mode, ())
    result = {"data": data, "seed": self.runtime.seed}
    for section in sections:
      result[section] = dataclasses.asdict(getattr(self, section))
    return result


# The sections each mode reads (and validates).
MODE_SECTIONS = {
    "search": ("data", "supernet", "search", "runtime"),
    "retrain": ("data", "train", "export", "runtime"),
    "transfer": ("data", "train", "export", "runtime"),
    "compress": ("data", "compress", "export", "runtime"),
    "export": ("export", "runtime"),
    "study": ("data", "supernet", "search", "train", "study", "runtime"),
}

SECTIONS = {
    "data": DataConfig, "supernet": SupernetConfig, "search": SearchConfig,
    "train": TrainConfig, "compress": CompressConfig, "export": ExportConfig,
    "runtime": RuntimeConfig, "study": StudyConfig,
}


def default_config(mode: str) -> ExperimentConfig:
  """The defaults of one mode; flags override them field by field.

  retrain: the paper's CIFAR-10 retraining (DARTS settings, ALGORITHM.md
  5.2); transfer: the ImageNet mobile setting (ALGORITHM.md 5.3).
  """
  if mode == "retrain":
    return ExperimentConfig(
        mode=mode, data=DataConfig(dataset="cifar10", batch_size=128, cutout=16),
        runtime=RuntimeConfig(model_dir="runs/retrain"))
  if mode == "transfer":
    return ExperimentConfig(
        mode=mode,
        data=DataConfig(dataset="imagenet2012", batch_size=128, crop_padding=0,
                        cutout=0),
        train=TrainConfig(
            genotype="bayesnas_imagenet", variant="imagenet", cells=14,
            channels=48, epochs=250, learning_rate=0.1, lr_schedule="exponential",
            lr_decay=0.97, weight_decay=3e-5, drop_prob=0.0,
            label_smoothing=0.1, image_size=224),
        runtime=RuntimeConfig(model_dir="runs/transfer"))
  if mode == "compress":
    return ExperimentConfig(
        mode=mode, data=DataConfig(dataset="mnist", batch_size=64, crop_padding=0,
                                   flip=False, cutout=0),
        runtime=RuntimeConfig(model_dir="runs/compress"))
  if mode == "study":
    return ExperimentConfig(mode=mode, runtime=RuntimeConfig(model_dir="runs/study"))
  if mode == "export":
    return ExperimentConfig(mode=mode, runtime=RuntimeConfig(model_dir="runs/retrain"))
  return ExperimentConfig(mode=mode)


# --- configs from {option name: value} ------------------------------------
# The sizes the embedded digits bring as their defaults for a mode; any flag,
# flag file or keyword argument still overrides them. The paper's CIFAR-10
# settings (8 cells, C = 36, batch 18, one epoch, cutout 16) leave a
# supernet at chance on 1,438 8x8 digits with nothing pruned, so a search on
# digits (README command 1, and a bare `--mode=search`) runs a small supernet
# long enough to train it and to shrink the gates of unhelpful ops; the
# measured figures are in the README. No flips (a mirrored digit is another
# glyph) and no cutout (4 pixels of 8 remove a quarter of the digit).
DATASET_DEFAULTS: Dict[Tuple[str, str], Dict[str, Any]] = {
    ("search", "digits"): {
        "model_dir": "runs/quickstart", "cells": 5, "channels": 8,
        "batch_size": 32, "crop_padding": 1, "flip": False, "cutout": 0,
        "learning_rate": 0.05, "arch_learning_rate": 0.1, "lambda_child": 0.05,
        "warmup_fraction": 0.2, "warmup_epochs": 2, "search_epochs": 3,
        "iterations": 1, "hessian_batches": 4, "checkpoint_every": 20,
        "log_every": 20,
    },
    # A small network of the found (or a released) cell, a minute or two of
    # training on 2 CPU cores.
    ("retrain", "digits"): {
        "model_dir": "runs/retrain_digits", "cells": 5, "channels": 16,
        "epochs": 10, "batch_size": 64, "learning_rate": 0.05,
        "crop_padding": 1, "flip": False, "cutout": 0, "drop_prob": 0.1,
        "log_every": 20,
    },
}


def _family_defaults(mode: str, given: Mapping[str, Any],
                     config: ExperimentConfig) -> Mapping[str, Any]:
  """What the family of the run brings as defaults (`mode_defaults`): that of
  --search_space for a search or study, that of --genotype for a retrain
  (e.g. an NB201 cell trains in the benchmark's network with its recipe).
  An unknown space or an unreadable genotype brings nothing: the sections'
  checks and the mode report those with their own messages."""
  try:
    if mode in ("search", "study"):
      family = registry.get_family(
          given.get("search_space", config.supernet.search_space))
    elif mode in ("retrain", "transfer"):
      family = registry.family_of(registry.resolve_genotype(
          given.get("genotype", config.train.genotype)))
    else:
      return {}
  except BayesNASError:
    return {}
  return family.mode_defaults(mode)


def option_names() -> Tuple[str, ...]:
  """Every field of every section: the names of the flags of main.py and of
  the keyword arguments of `bayesnas_tf.api` that set them."""
  names = set()
  for section_cls in SECTIONS.values():
    names.update(f.name for f in dataclasses.fields(section_cls))
  return tuple(sorted(names))


def _field_annotations() -> Dict[str, str]:
  return {f.name: str(f.type) for section_cls in SECTIONS.values()
          for f in dataclasses.fields(section_cls)}


def _checked_value(name: str, annotation: str, value):
  """`value` as the field type `annotation` wants, as a flag would parse it;
  raises ConfigError naming the option otherwise."""
  optional = annotation.startswith("Optional[")
  kind = annotation[len("Optional["):-1] if optional else annotation
  if value is None and optional:
    return None
  if kind.startswith("Tuple["):
    if isinstance(value, str):  # "sep3,max" as the list flag takes it.
      value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
      return tuple(value)
    expected = "a list of names"
  elif kind == "bool":
    if isinstance(value, bool):
      return value
    expected = "True or False"
  elif kind == "int":
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    expected = "an integer"
  elif kind == "float":
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    expected = "a number"
  else:  # str
    if isinstance(value, str):
      return value
    expected = "a string"
  raise ConfigError(f"--{name} must be {expected}"
                    f"{' (or None)' if optional else ''}; received {name}={value!r}")


def config_from_values(mode: str, values: Mapping[str, Any],
                       base: Optional[ExperimentConfig] = None) -> ExperimentConfig:
  """{option name: value} -> the frozen, validated configuration of `mode`.

  The one mapping from flat option names to config sections, used by
  main.py (the flags that were set) and by `bayesnas_tf.api` (keyword
  arguments). Layers, each overriding the one before: the mode's defaults
  (`default_config`), the dataset's defaults for the mode
  (`DATASET_DEFAULTS`), then `values`. A name sets the field of that name in
  every section that has one (e.g. learning_rate in both the search and the
  training section); each mode reads only its own sections. A None value
  leaves the field to the layers below, as an unset flag does. With `base`
  (a config of `mode`), `values` apply on top of it instead of the layers.

  Raises:
    ConfigError: an unknown name, a value of the wrong type, or a value the
      sections' `validate` rejects; the message names the option.
  """
  check_choice("mode", mode, MODES)
  annotations = _field_annotations()
  unknown = sorted(set(values) - set(annotations))
  if unknown:
    raise ConfigError(
        f"unknown option(s) {', '.join(unknown)}; the options are the flags of "
        "main.py (python main.py --helpfull)")
  config = default_config(mode) if base is None else base
  given = {name: value for name, value in values.items() if value is not None}
  dataset = given.get("dataset", config.data.dataset)
  layered = dict(given) if base is not None else {
      **DATASET_DEFAULTS.get((mode, dataset), {}),
      **_family_defaults(mode, given, config), **given}
  sections = {}
  for section in SECTIONS:
    current = getattr(config, section)
    updates = {f.name: _checked_value(f.name, annotations[f.name], layered[f.name])
               for f in dataclasses.fields(current) if f.name in layered}
    sections[section] = dataclasses.replace(current, **updates)
  return dataclasses.replace(config, **sections).validate()
