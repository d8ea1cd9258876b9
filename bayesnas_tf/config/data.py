"""`DataConfig`: which data, and how it is batched and augmented."""

from __future__ import annotations

import dataclasses
from typing import Optional

from bayesnas_tf.config.checks import check_positive
from bayesnas_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data, and how it is batched and augmented.

  Attributes:
    dataset: `digits` (embedded), a TFDS name, `npz:PATH` or `folder:PATH`.
    data_dir: TFDS data directory.
    download: let TFDS download (needs internet).
    batch_size: the global batch size (split across replicas).
    eval_batch_size: batch size for evaluation.
    crop_padding: zero padding before the random crop (0 = no crop).
    flip: random horizontal flips.
    cutout: cutout side in pixels (search: warm-up only), 0 = off.
    max_train_examples: use a seeded random N of the training examples
      (0 = all).
    max_eval_examples: evaluate on a fixed random N test examples (0 = all).
  """
  dataset: str = "digits"
  data_dir: Optional[str] = None
  download: bool = False
  batch_size: int = 18
  eval_batch_size: int = 256
  crop_padding: int = 4
  flip: bool = True
  cutout: int = 16
  max_train_examples: int = 0
  max_eval_examples: int = 0

  def validate(self) -> None:
    if not self.dataset:
      raise ConfigError("--dataset must not be empty; try --dataset=digits")
    check_positive("batch_size", self.batch_size)
    check_positive("eval_batch_size", self.eval_batch_size)
    check_positive("crop_padding", self.crop_padding, allow_zero=True)
    check_positive("cutout", self.cutout, allow_zero=True)
    check_positive("max_train_examples", self.max_train_examples, allow_zero=True)
    check_positive("max_eval_examples", self.max_eval_examples, allow_zero=True)
