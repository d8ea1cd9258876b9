"""Training a derived network and exporting it: `TrainConfig`, `ExportConfig`."""

from __future__ import annotations

import dataclasses
from typing import Optional

from bayesnas_tf.config.checks import check_choice
from bayesnas_tf.config.checks import check_momentum
from bayesnas_tf.config.checks import check_positive
from bayesnas_tf.errors import ConfigError

LR_SCHEDULES = ("cosine", "exponential", "constant")
DROP_PATHS = ("official", "darts")
VARIANTS = ("cifar", "imagenet")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training a derived network (--mode=retrain / transfer, DESIGN.md 7).

  Attributes:
    genotype: a built-in genotype name or a path to genotype.json (or to a
      search's model_dir).
    variant: "cifar" (retrain) or "imagenet" (transfer) macro network.
    cells, channels: network size (paper: 20 / 36 CIFAR, 14 / 48 ImageNet).
    epochs: training epochs.
    learning_rate, lr_schedule, lr_decay: the initial lr; "cosine" to 0 over
      the epochs, or "exponential" (lr * lr_decay^epoch), per epoch.
    momentum, weight_decay, grad_clip: SGD; weight decay on all weights; the
      global gradient norm is clipped (0 = off).
    drop_path: "official" (per-op channel dropout) or "darts" (drop-path).
    drop_prob: final drop probability, ramped 0 -> drop_prob over the epochs.
    auxiliary, auxiliary_weight: DARTS auxiliary head and its loss weight.
    label_smoothing: of the cross-entropy targets.
    image_size: training/evaluation crop (0 = the dataset's own size).
    warm_start: a retrain model_dir whose cell weights initialise the cells.
  """
  genotype: str = "bayesnas_l0.01"
  variant: str = "cifar"
  cells: int = 20
  channels: int = 36
  epochs: int = 600
  learning_rate: float = 0.025
  lr_schedule: str = "cosine"
  lr_decay: float = 0.97
  momentum: float = 0.9
  weight_decay: float = 3e-4
  grad_clip: float = 5.0
  drop_path: str = "official"
  drop_prob: float = 0.2
  auxiliary: bool = False
  auxiliary_weight: float = 0.4
  label_smoothing: float = 0.0
  image_size: int = 0
  warm_start: Optional[str] = None

  def validate(self) -> None:
    if not self.genotype:
      raise ConfigError("--genotype must name a built-in genotype or a genotype.json")
    check_choice("variant", self.variant, VARIANTS)
    # The DAG networks need 3 (their builder says so, reduction_positions);
    # an NB201 network has --cells cells per stage.
    check_positive("cells", self.cells)
    if self.channels < 2:
      raise ConfigError(f"--channels must be at least 2; received channels={self.channels}")
    check_positive("epochs", self.epochs)
    check_positive("learning_rate", self.learning_rate)
    check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
    if not 0 < self.lr_decay <= 1:
      raise ConfigError(f"--lr_decay must be in (0, 1]; received {self.lr_decay!r}")
    check_momentum("momentum", self.momentum)
    check_positive("weight_decay", self.weight_decay, allow_zero=True)
    check_positive("grad_clip", self.grad_clip, allow_zero=True)
    check_choice("drop_path", self.drop_path, DROP_PATHS)
    if not 0 <= self.drop_prob < 1:
      raise ConfigError(f"--drop_prob must be in [0, 1); received {self.drop_prob!r}")
    check_positive("auxiliary_weight", self.auxiliary_weight, allow_zero=True)
    if not 0 <= self.label_smoothing < 1:
      raise ConfigError(
          f"--label_smoothing must be in [0, 1); received {self.label_smoothing!r}")
    check_positive("image_size", self.image_size, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """SavedModel export to <export_dir>/<model_name>/<version>/ (DESIGN.md 7).

  Attributes:
    export: export at the end of retrain/transfer/compress.
    export_dir: the model repository root (TF Serving's --model_base_path
      parent).
    model_name: the model's folder; default: the genotype (or model) name.
  """
  export: bool = True
  export_dir: str = "saved_models"
  model_name: Optional[str] = None

  def validate(self) -> None:
    if not self.export_dir:
      raise ConfigError("--export_dir must not be empty")
    if self.model_name is not None and (
        not self.model_name or any(c in self.model_name for c in "/\\") or
        self.model_name in (".", "..")):
      raise ConfigError(
          f"--model_name must be a plain folder name; received {self.model_name!r}")
