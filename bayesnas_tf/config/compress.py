"""`CompressConfig`: Bayesian structured pruning of a CNN (--mode=compress)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from bayesnas_tf.config.checks import check_choice
from bayesnas_tf.config.checks import check_momentum
from bayesnas_tf.config.checks import check_positive
from bayesnas_tf.config.search import PRUNE_THRESHOLD
from bayesnas_tf.errors import ConfigError

COMPRESS_ARCHITECTURES = ("lenet5", "vgg")
GROUPINGS = ("filter", "channel", "shape")
# The weight Hessian estimators (compress/weight_hessian.py); no HVP oracle.
COMPRESS_HESSIAN_METHODS = ("ggn", "ggn_mc", "diag_backprop")


@dataclasses.dataclass(frozen=True)
class CompressConfig:
  """Bayesian structured pruning of a CNN (--mode=compress; the paper's
  Algorithm 3, ALGORITHM.md 7).

  Attributes:
    architecture: the model trained from scratch when no base_model is given:
      "lenet5" (LeNet-5-Caffe, 431,080 params) or "vgg" (VGG-like with BN).
    base_model: a trained Keras Sequential/functional CNN (.keras) to
      compress instead.
    vgg_width: channel multiplier of the VGG-like network (1.0 = 64..512).
    groups: which weight groups carry a gamma: filter (output units),
      channel (input units) and/or shape (one kernel position of one input
      channel, across filters).
    lambda_group: the group-lasso strength lambda (also the noise variance
      dividing H, as in the search), on kernels measured in units of their
      layer's RMS (compress/group_prior.py).
    iterations: train -> Hessian -> update -> prune rounds.
    pretrain_epochs: epochs to train the architecture from scratch.
    epochs_per_iteration: re-weighted group-lasso epochs per round.
    finetune_epochs: epochs of the slim model after physical pruning.
    learning_rate: SGD learning rate of the compression rounds (constant)
      and of fine-tuning (cosine from it).
    pretrain_learning_rate: of pretraining (cosine from it); None: the
      learning_rate.
    momentum, weight_decay: SGD for all phases.
    hessian: "ggn" (exact GGN diagonal, K backward passes), "ggn_mc" or
      "diag_backprop" (the paper's diagonal back-propagation; ReLU/linear
      activations only).
    hessian_batches: batches the weight Hessian is averaged over.
    prune_threshold: prune a group when gamma <= this (default 1/(2 pi e)).
  """
  architecture: str = "lenet5"
  base_model: Optional[str] = None
  vgg_width: float = 1.0
  groups: Tuple[str, ...] = ("filter", "channel")
  # Defaults: LeNet-5 on the full MNIST (flags/compress_lenet5_mnist.flags).
  lambda_group: float = 3e-5
  iterations: int = 3
  pretrain_epochs: int = 6
  epochs_per_iteration: int = 1
  finetune_epochs: int = 6
  learning_rate: float = 0.01
  pretrain_learning_rate: Optional[float] = None
  momentum: float = 0.9
  weight_decay: float = 0.0
  hessian: str = "ggn"
  hessian_batches: int = 4
  prune_threshold: float = PRUNE_THRESHOLD

  def validate(self) -> None:
    check_choice("architecture", self.architecture, COMPRESS_ARCHITECTURES)
    if self.base_model is not None and not self.base_model.endswith(".keras"):
      raise ConfigError(
          f"--base_model must be a .keras file; received {self.base_model!r}")
    check_positive("vgg_width", self.vgg_width)
    if not self.groups:
      raise ConfigError(f"--groups needs at least one of {', '.join(GROUPINGS)}")
    for group in self.groups:
      check_choice("groups", group, GROUPINGS)
    check_positive("lambda_group", self.lambda_group)
    check_positive("iterations", self.iterations)
    check_positive("pretrain_epochs", self.pretrain_epochs, allow_zero=True)
    check_positive("epochs_per_iteration", self.epochs_per_iteration)
    check_positive("finetune_epochs", self.finetune_epochs, allow_zero=True)
    check_positive("learning_rate", self.learning_rate)
    if self.pretrain_learning_rate is not None:
      check_positive("pretrain_learning_rate", self.pretrain_learning_rate)
    check_momentum("momentum", self.momentum)
    check_positive("weight_decay", self.weight_decay, allow_zero=True)
    check_choice("hessian", self.hessian, COMPRESS_HESSIAN_METHODS)
    check_positive("hessian_batches", self.hessian_batches)
    check_positive("prune_threshold", self.prune_threshold)
