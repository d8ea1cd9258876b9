"""`StudyConfig`: searched against random cells (--mode=study)."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from bayesnas_tf.config.checks import check_positive
from bayesnas_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Searched against random cells (--mode=study, bayesnas_tf/modes/study.py).

  The searches use the supernet and search sections; every genotype is then
  retrained with the one schedule below (the train section supplies the
  rest: cosine lr, weight decay, drop path, clipping), on the data section's
  split, with the same seed.

  Attributes:
    study_seeds: searches, with seeds seed, seed + 1, ...
    random_per_seed: random genotypes per found one (same ops per cell type).
    study_reference: released genotypes retrained as reference rows.
    retrain_cells, retrain_channels, retrain_epochs, retrain_learning_rate,
      retrain_batch_size: the shared retraining schedule.
    study_parts: folders of studies run apart (each its own --seed and
      --study_seeds, e.g. one per core or per GPU) whose study.json files are
      merged into this study's folder instead of running anything; they must
      share the dataset and the retraining schedule (seeds aside).
  """
  study_seeds: int = 3
  random_per_seed: int = 2
  study_reference: Tuple[str, ...] = ("bayesnas_l0.01",)
  retrain_cells: int = 8
  retrain_channels: int = 16
  retrain_epochs: int = 10
  retrain_learning_rate: float = 0.05
  retrain_batch_size: int = 64
  study_parts: Tuple[str, ...] = ()

  def validate(self) -> None:
    check_positive("study_seeds", self.study_seeds)
    check_positive("random_per_seed", self.random_per_seed, allow_zero=True)
    if self.retrain_cells < 3:
      raise ConfigError(
          f"--retrain_cells must be at least 3; received {self.retrain_cells}")
    check_positive("retrain_channels", self.retrain_channels)
    check_positive("retrain_epochs", self.retrain_epochs)
    check_positive("retrain_learning_rate", self.retrain_learning_rate)
    check_positive("retrain_batch_size", self.retrain_batch_size)
