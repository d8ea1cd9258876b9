"""The run directory (--model_dir): what a run writes first, and the check
that it belongs to this configuration.

A directory holds one run. Starting a run in a directory that holds a run of
another mode or configuration is refused before anything is written, so a
refused run changes nothing; the same configuration resumes.
"""

from __future__ import annotations

import json
import os
from typing import List

import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import CheckpointMismatchError, ConfigError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.io_utils import output_errors

CONFIG_FILE = "config.json"


def read_config(model_dir: str) -> ExperimentConfig:
  path = os.path.join(model_dir, CONFIG_FILE)
  try:
    with tf.io.gfile.GFile(path) as f:
      return ExperimentConfig.from_dict(json.load(f))
  except tf.errors.NotFoundError:
    raise CheckpointMismatchError(
        f"{model_dir} holds no {CONFIG_FILE}; pass the --model_dir of a "
        "finished run") from None
  except (ValueError, TypeError, ConfigError) as error:
    raise CheckpointMismatchError(
        f"{path} cannot be read ({error}); pass a new --model_dir") from None


def check_model_dir(config: ExperimentConfig) -> None:
  """Refuses a `model_dir` holding a run of another mode or configuration."""
  model_dir = config.runtime.model_dir
  has_checkpoint = tf.io.gfile.exists(os.path.join(model_dir, "checkpoints"))
  if not tf.io.gfile.exists(os.path.join(model_dir, CONFIG_FILE)):
    if has_checkpoint:
      raise CheckpointMismatchError(
          f"{model_dir} holds checkpoints but no {CONFIG_FILE}, so they cannot "
          "be matched to this configuration; pass a new --model_dir")
    return
  previous = read_config(model_dir)
  if previous.mode != config.mode:
    raise CheckpointMismatchError(
        f"{model_dir} holds a --mode={previous.mode} run; pass a new --model_dir")
  old = json.loads(json.dumps(previous.fingerprint()))
  new = json.loads(json.dumps(config.fingerprint()))
  found = differences(old, new)
  if found:
    raise CheckpointMismatchError(
        f"{model_dir} holds a {config.mode} run with a different configuration "
        f"({'; '.join(found)}); pass a new --model_dir, or the original "
        "flags to resume it")


def differences(old, new, prefix: str = "") -> List[str]:
  """'key: old -> new' for every leaf that differs between two nested dicts."""
  if isinstance(old, dict) and isinstance(new, dict):
    result = []
    for key in sorted(set(old) | set(new)):
      result += differences(old.get(key), new.get(key),
                            f"{prefix}.{key}" if prefix else key)
    return result
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def write_run_files(config: ExperimentConfig, flags_text: str) -> None:
  """config.json (once) and flags.txt (each start) in the model directory."""
  model_dir = config.runtime.model_dir
  with output_errors(model_dir):
    os.makedirs(model_dir, exist_ok=True)
  config_path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.exists(config_path):
    atomic_write_text(config_path, config.to_json())
  if flags_text:
    atomic_write_text(os.path.join(model_dir, "flags.txt"), flags_text)
