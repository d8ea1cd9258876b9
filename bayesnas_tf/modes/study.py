"""Searched cells against random cells (--mode=study).

The evidence the paper's claim needs: on one dataset and one budget, cells
found by the search should train to a better accuracy than cells drawn at
random from the same space with the same number of ops. One study:

1. runs the search with `study_seeds` seeds and derives each genotype;
2. draws `random_per_seed` random genotypes per found one, from the same
   space and primitives, with the same number of kept ops per cell type (the
   family's `random_genotype_like`; for the DAG cells, spaces/dag/
   sampling.py: ops placed uniformly over the (edge, op) pairs, and a draw
   in which an op reads a node that lost every input is redrawn, because the
   search never produces one: Proposition 1);
3. adds the released cells of `study_reference` (e.g. bayesnas_l0.01) as
   reference rows;
4. retrains every genotype with one identical schedule (the same cells,
   channels, epochs, learning rate, batch, seed and data split), so the
   genotype is the only difference between runs;
5. writes `study.json` (per run: genotype, params, test accuracy, wall time),
   prints a table with the mean and standard deviation per group (searched /
   random / released) and saves `study.png` (accuracy vs params) when
   matplotlib is installed.

Every run has its own model_dir under the study's, with its checkpoints; a
finished run is recorded in study.json at once, so a study that stops
resumes with the run it was in (which itself resumes from its checkpoint).

A study's seeds can also run apart, as one-seed studies side by side (a
process per core or per GPU: `--seed=s --study_seeds=1`, each in its own
folder); `study_parts` then merges their study.json files into one table
(`merge_studies`), refusing parts that differ in dataset or schedule. Each
part retrains with its own seed, so a searched cell is still compared with
random cells trained exactly as it was.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.io_utils import atomic_write_bytes
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.modes import search as search_mode
from bayesnas_tf.modes import train as train_mode
from bayesnas_tf.runtime import run_dir
from bayesnas_tf.spaces import registry

STUDY_FILE = "study.json"
PLOT_FILE = "study.png"
STUDY_SCHEMA_VERSION = 1
GROUPS = ("searched", "random", "released")


@dataclasses.dataclass
class RunRecord:
  """One finished retrain of the study (a row of study.json)."""
  name: str
  group: str
  search_seed: Optional[int]
  genotype: Dict[str, Any]
  kept_ops: Dict[str, int]
  params: int
  test_accuracy: float
  wall_time_s: float
  model_dir: str
  search_wall_time_s: Optional[float] = None
  search_test_accuracy: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class StudyResult:
  model_dir: str
  study_path: str
  runs: Tuple[RunRecord, ...]
  summary: Dict[str, Dict[str, float]]
  plot_path: Optional[str]


def summarize(runs: Sequence[RunRecord]) -> Dict[str, Dict[str, float]]:
  """Mean and (sample) standard deviation of accuracy and params per group."""
  summary = {}
  for group in GROUPS:
    rows = [r for r in runs if r.group == group]
    if not rows:
      continue
    acc = np.array([r.test_accuracy for r in rows])
    params = np.array([r.params for r in rows], np.float64)
    std = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    summary[group] = {"runs": len(rows), "accuracy_mean": float(acc.mean()),
                      "accuracy_std": std(acc), "params_mean": float(params.mean()),
                      "params_std": std(params)}
  return summary


def format_table(runs: Sequence[RunRecord],
                 summary: Dict[str, Dict[str, float]]) -> str:
  lines = [f"{'run':<28} {'group':<9} {'ops N/R':>8} {'params':>10} {'test acc':>9}"]
  for r in runs:
    ops = "/".join(str(n) for n in r.kept_ops.values())
    lines.append(f"{r.name:<28} {r.group:<9} {ops:>8} {r.params:>10,} "
                 f"{r.test_accuracy:>9.4f}")
  lines.append("")
  lines.append(f"{'group':<9} {'runs':>4} {'test accuracy':>18} {'params':>22}")
  for group, s in summary.items():
    lines.append(
        f"{group:<9} {s['runs']:>4} {s['accuracy_mean']:>9.4f} +- {s['accuracy_std']:.4f}"
        f" {s['params_mean']:>12,.0f} +- {s['params_std']:,.0f}")
  return "\n".join(lines)


def save_plot(runs: Sequence[RunRecord], path: str) -> Optional[str]:
  """Accuracy vs params, one marker per run; None without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info("matplotlib is not installed, so %s is not drawn "
                 "(pip install matplotlib)", path)
    return None
  figure, axes = plt.subplots(figsize=(6, 4))
  markers = {"searched": ("o", "tab:blue"), "random": ("x", "tab:gray"),
             "released": ("*", "tab:red")}
  for group, (marker, color) in markers.items():
    rows = [r for r in runs if r.group == group]
    if rows:
      axes.scatter([r.params for r in rows], [r.test_accuracy for r in rows],
                   marker=marker, color=color, s=60, label=group)
  axes.set_xlabel("trainable parameters")
  axes.set_ylabel("test accuracy")
  axes.set_title("BayesNAS study: searched vs random cells")
  axes.legend()
  figure.tight_layout()
  # Drawn in memory and written atomically, like every other output.
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=120)
  plt.close(figure)
  atomic_write_bytes(path, buffer.getvalue())
  return path


class Study:
  """Runs (or resumes) one study in `config.runtime.model_dir`."""

  def __init__(self, config: ExperimentConfig, flags_text: str = ""):
    self.config = config
    self.flags_text = flags_text
    self.model_dir = config.runtime.model_dir
    self.study_path = os.path.join(self.model_dir, STUDY_FILE)
    space = config.supernet.search_space
    # Random genotypes come from the family of the searched space; a space
    # without them is refused before the first search.
    self.family = registry.get_family(space)
    self.family.check_study(space)
    self.runs: Dict[str, RunRecord] = self._load()

  # --- bookkeeping --------------------------------------------------------
  def _load(self) -> Dict[str, RunRecord]:
    if not os.path.exists(self.study_path):
      return {}
    with open(self.study_path, encoding="utf-8") as f:
      data = json.load(f)
    return {r["name"]: RunRecord(**r) for r in data.get("runs", [])}

  def _record(self, record: RunRecord) -> None:
    self.runs[record.name] = record
    self._write()

  def _write(self) -> Dict[str, Dict[str, float]]:
    runs = list(self.runs.values())
    summary = summarize(runs)
    study = self.config.study
    atomic_write_text(self.study_path, json.dumps({
        "schema_version": STUDY_SCHEMA_VERSION,
        "dataset": self.config.data.dataset,
        "schedule": {
            "cells": study.retrain_cells, "channels": study.retrain_channels,
            "epochs": study.retrain_epochs,
            "learning_rate": study.retrain_learning_rate,
            "batch_size": study.retrain_batch_size,
            "seed": self.config.runtime.seed,
        },
        "runs": [dataclasses.asdict(r) for r in runs],
        "summary": summary,
    }, indent=2, sort_keys=True))
    return summary

  def _run_dir(self, name: str) -> str:
    return os.path.join(self.model_dir, "runs", name)

  # --- configurations -----------------------------------------------------
  def search_config(self, seed: int) -> ExperimentConfig:
    cfg = self.config
    return dataclasses.replace(
        cfg, mode="search",
        runtime=dataclasses.replace(cfg.runtime, model_dir=self._run_dir(
            f"search_seed{seed}"), seed=seed)).validate()

  def retrain_config(self, name: str, genotype_path: str) -> ExperimentConfig:
    """The one schedule every genotype is retrained with."""
    cfg, study = self.config, self.config.study
    return dataclasses.replace(
        cfg, mode="retrain",
        data=dataclasses.replace(cfg.data, batch_size=study.retrain_batch_size),
        train=dataclasses.replace(
            cfg.train, genotype=genotype_path, variant="cifar",
            cells=study.retrain_cells, channels=study.retrain_channels,
            epochs=study.retrain_epochs,
            learning_rate=study.retrain_learning_rate),
        export=dataclasses.replace(cfg.export, export=False),
        runtime=dataclasses.replace(cfg.runtime, model_dir=self._run_dir(name))
    ).validate()

  # --- runs ---------------------------------------------------------------
  def _search(self, seed: int):
    config = self.search_config(seed)
    start = time.perf_counter()
    result = search_mode.run_search(config, self.flags_text)
    return result, time.perf_counter() - start

  def _retrain(self, name: str, group: str, genotype,
               search_seed: Optional[int] = None, **extra) -> RunRecord:
    import keras  # pylint: disable=g-import-not-at-top
    genotype_path = os.path.join(self.model_dir, "genotypes", f"{name}.json")
    if not os.path.exists(genotype_path):
      genotype.save(genotype_path)
    config = self.retrain_config(name, genotype_path)
    logging.info("study: retraining %s (%s, %s ops)", name, group,
                 self.family.op_counts(genotype))
    start = time.perf_counter()
    result = train_mode.run_training(config, self.flags_text)
    wall = time.perf_counter() - start
    params = train_mode.train_summary(config)["trainable_params"]
    keras.backend.clear_session()   # Free the finished run's graphs.
    record = RunRecord(
        name=name, group=group, search_seed=search_seed,
        genotype=genotype.to_dict(), kept_ops=self.family.op_counts(genotype),
        params=int(params), test_accuracy=float(result.test_accuracy),
        wall_time_s=round(wall, 1), model_dir=config.runtime.model_dir, **extra)
    self._record(record)
    logging.info("study: %s test accuracy %.4f, %s params, %.0f s", name,
                 record.test_accuracy, f"{record.params:,}", wall)
    return record

  def run(self) -> StudyResult:
    import keras  # pylint: disable=g-import-not-at-top
    study = self.config.study
    base_seed = self.config.runtime.seed
    for i in range(study.study_seeds):
      seed = base_seed + i
      searched_name = f"searched_seed{seed}"
      random_names = [f"random_seed{seed}_{j}" for j in range(study.random_per_seed)]
      if searched_name in self.runs and all(n in self.runs for n in random_names):
        continue
      result, search_wall = self._search(seed)
      keras.backend.clear_session()
      found = registry.load_genotype(result.genotype_path)
      counts = self.family.op_counts(found)
      logging.info("study: search seed %d kept ops %s (supernet test accuracy "
                   "%.4f)", seed, counts, result.test_accuracy)
      if searched_name not in self.runs:
        self._retrain(searched_name, "searched", found, seed,
                      search_wall_time_s=round(search_wall, 1),
                      search_test_accuracy=float(result.test_accuracy))
      for j, name in enumerate(random_names):
        if name in self.runs:
          continue
        rng = np.random.default_rng([base_seed, seed, j])
        genotype = self.family.random_genotype_like(
            found, self.config.supernet, rng,
            {"random": True, "matches": searched_name, "draw": j})
        self._retrain(name, "random", genotype, seed)
    for reference in study.study_reference:
      name = f"released_{reference}"
      if name not in self.runs:
        self._retrain(name, "released", registry.resolve_genotype(reference))
    summary = self._write()
    runs = tuple(self.runs.values())
    plot = save_plot(runs, os.path.join(self.model_dir, PLOT_FILE))
    return StudyResult(self.model_dir, self.study_path, runs, summary, plot)


def _read_part(path: str) -> Dict[str, Any]:
  study_path = os.path.join(path, STUDY_FILE)
  if not os.path.exists(study_path):
    raise ConfigError(f"--study_parts: {path} holds no {STUDY_FILE} (no run of "
                      "that study has finished yet, or it is not a study folder)")
  try:
    with open(study_path, encoding="utf-8") as f:
      data = json.load(f)
    schedule, runs = dict(data["schedule"]), list(data["runs"])
    dataset = data["dataset"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"--study_parts: {study_path} cannot be read as a study "
                      f"({type(e).__name__}: {e})") from e
  if data.get("schema_version") != STUDY_SCHEMA_VERSION:
    raise ConfigError(f"--study_parts: {study_path} has schema_version "
                      f"{data.get('schema_version')!r}; this version reads "
                      f"{STUDY_SCHEMA_VERSION}")
  return {"dataset": dataset, "schedule": schedule, "runs": runs}


def merge_studies(config: ExperimentConfig, flags_text: str = "") -> StudyResult:
  """Merges the study.json of `config.study.study_parts` into model_dir.

  The parts must agree on the dataset and on the retraining schedule apart
  from its seed; a run name found in two parts (the same search seed, or the
  released rows of --study_reference retrained in each) is refused, since
  the table would count it twice.
  """
  model_dir = config.runtime.model_dir
  parts = config.study.study_parts
  target = os.path.realpath(model_dir)
  first_path, first = None, None
  seeds, runs, owner = [], {}, {}
  for path in parts:
    if os.path.realpath(path) == target:
      raise ConfigError(f"--study_parts: {path} is --model_dir itself; merge "
                        "into a new folder")
    part = _read_part(path)
    schedule = dict(part["schedule"])
    seeds.append(schedule.pop("seed", None))
    if first is None:
      first_path, first = path, {"dataset": part["dataset"], "schedule": schedule}
    else:
      found = run_dir.differences(
          first, {"dataset": part["dataset"], "schedule": schedule})
      if found:
        raise ConfigError(f"--study_parts: {path} was not run like {first_path} "
                          f"({'; '.join(found)}), so their runs cannot share a "
                          "table")
    for row in part["runs"]:
      name = row.get("name")
      if name in runs:
        raise ConfigError(
            f"--study_parts: run {name} is in both {owner[name]} and {path}; "
            "give each part its own --seed, and retrain --study_reference in "
            "one part only (--study_reference= in the others)")
      try:
        runs[name] = RunRecord(**row)
      except TypeError as e:
        raise ConfigError(f"--study_parts: a run of {path} cannot be read "
                          f"({e})") from e
      owner[name] = path
    logging.info("study: part %s: %d runs (seed %s)", path, len(part["runs"]),
                 seeds[-1])
  # Every part is read and checked before the folder is touched.
  run_dir.check_model_dir(config)
  run_dir.write_run_files(config, flags_text)
  records = tuple(runs.values())
  summary = summarize(records)
  study_path = os.path.join(model_dir, STUDY_FILE)
  atomic_write_text(study_path, json.dumps({
      "schema_version": STUDY_SCHEMA_VERSION,
      "dataset": first["dataset"],
      "schedule": dict(first["schedule"], seeds=seeds),
      "parts": [os.path.abspath(p) for p in parts],
      "runs": [dataclasses.asdict(r) for r in records],
      "summary": summary,
  }, indent=2, sort_keys=True))
  plot = save_plot(records, os.path.join(model_dir, PLOT_FILE))
  return StudyResult(model_dir, study_path, records, summary, plot)


def run_study(config: ExperimentConfig, flags_text: str = "") -> StudyResult:
  """--mode=study: see the module doc."""
  if config.study.study_parts:
    return merge_studies(config, flags_text)
  run_dir.check_model_dir(config)
  run_dir.write_run_files(config, flags_text)
  return Study(config, flags_text).run()


def result_text(result: StudyResult) -> str:
  text = format_table(result.runs, result.summary)
  text += f"\n\nstudy.json: {result.study_path}"
  if result.plot_path:
    text += f"\nplot: {result.plot_path}"
  return text
