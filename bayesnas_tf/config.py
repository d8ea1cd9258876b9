"""Frozen configuration dataclasses; `main.py` builds them from flags.

The library never reads flags: every entry point takes an `ExperimentConfig`
(flags -> config -> validate -> freeze -> `config.json`, STYLE.md 14).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, Mapping, Optional, Tuple

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.op_names import PRIMITIVES, PRUNE_THRESHOLD, check_primitives

MODES = ("search", "retrain", "transfer", "compress", "export", "study")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
# The gate Hessian estimators (search/hessian.py reads this list).
HESSIAN_METHODS = ("ggn", "ggn_mc", "exact", "diag_backprop")
# Keras dtype policies (precision.py).
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
DEPENDENCIES = ("paper", "official")
INITS = ("paper", "official")
CONFIG_SCHEMA_VERSION = 1


def _positive(name: str, value, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not ok or (isinstance(value, float) and not math.isfinite(value)):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"--{name} must be {bound}; received {name}={value!r}")


def _momentum(name: str, value) -> None:
  if not 0 <= value < 1:
    raise ConfigError(f"--{name} must be in [0, 1); received {name}={value!r}")


def _choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(
        f"--{name} must be one of {', '.join(choices)}; received {name}={value!r}")


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
    _positive("batch_size", self.batch_size)
    _positive("eval_batch_size", self.eval_batch_size)
    _positive("crop_padding", self.crop_padding, allow_zero=True)
    _positive("cutout", self.cutout, allow_zero=True)
    _positive("max_train_examples", self.max_train_examples, allow_zero=True)
    _positive("max_eval_examples", self.max_eval_examples, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
  """The search supernet (ALGORITHM.md 1.4).

  For the tree spaces (`treecell_a`, `proxyless`: the proxyless search,
  PROXYLESS.md) the supernet is a bottleneck PyramidNet of 3 x depth_blocks
  blocks widened by alpha from start_planes; cells/channels/primitives/
  stem_multiplier then play no part.
  """
  search_space: str = "bayesnas"
  cells: int = 8
  channels: int = 36
  primitives: Tuple[str, ...] = PRIMITIVES
  stem_multiplier: int = 3
  depth_blocks: int = 18
  alpha: float = 84.0
  start_planes: int = 16

  def validate(self) -> None:
    from bayesnas_tf import tree_space  # pylint: disable=g-import-not-at-top
    tree_space.check_search_space_name(self.search_space)
    if tree_space.is_tree_space(self.search_space):
      _positive("alpha", self.alpha, allow_zero=True)
      tree_space.pyramid_widths(self.depth_blocks, self.alpha, self.start_planes)
    if self.cells < 3:
      raise ConfigError(
          f"--cells must be at least 3 (one normal and two reduction cells); "
          f"received cells={self.cells}")
    _positive("channels", self.channels)
    _positive("stem_multiplier", self.stem_multiplier)
    check_primitives(self.primitives)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """The BayesNAS search (DESIGN.md 5; Algorithm 1/2 of the paper).

  Attributes:
    lambda_child: lambda_w^o for the op gates (paper: 0.01, 0.007, 0.005).
    lambda_origin: lambda for the edge gates w_all; None = lambda_child.
    learning_rate, momentum, weight_decay: SGD of the network weights;
      weight decay is on weights only, never on gates.
    arch_learning_rate, arch_momentum: SGD of the gates (no weight decay).
    warmup_fraction: fraction of the training split used for the warm-up;
      the rest (disjoint) is used for the joint search epoch(s).
    warmup_epochs, search_epochs: epochs per phase and iteration.
    iterations: T, the number of train -> Hessian -> update -> prune rounds.
    hessian: "ggn" (exact Gauss-Newton diagonal), "ggn_mc", "exact" or
      "diag_backprop" (the paper's diagonal back-propagation).
    hessian_batches: batches the Hessian is averaged over.
    dependency: "paper" (eq. 8 with predecessors) or "official".
    init: "paper" (gamma = omega = 1) or "official" (U(0, 1)).
    prune_threshold: prune when gamma <= this (default 1/(2 pi e)).
    grad_clip: global-norm clip of the weight gradients (0 = off).
  """
  lambda_child: float = 0.01
  lambda_origin: Optional[float] = None
  learning_rate: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 1e-4
  arch_learning_rate: float = 0.1
  arch_momentum: float = 0.9
  warmup_fraction: float = 0.1
  warmup_epochs: int = 1
  search_epochs: int = 1
  iterations: int = 1
  hessian: str = "ggn"
  hessian_batches: int = 1
  dependency: str = "paper"
  init: str = "paper"
  prune_threshold: float = PRUNE_THRESHOLD
  grad_clip: float = 0.0

  @property
  def effective_lambda_origin(self) -> float:
    return self.lambda_child if self.lambda_origin is None else self.lambda_origin

  def validate(self) -> None:
    for name in ("lambda_child", "learning_rate", "arch_learning_rate"):
      value = getattr(self, name)
      if not value > 0 or not math.isfinite(value):
        raise ConfigError(
            f"--{name} must be > 0; received {name}={value!r} "
            "(the paper uses lambda 0.01, 0.007 or 0.005 and lr 0.1)")
    if self.lambda_origin is not None and (
        not self.lambda_origin > 0 or not math.isfinite(self.lambda_origin)):
      raise ConfigError(
          f"--lambda_origin must be > 0 (or unset to use --lambda_child); "
          f"received lambda_origin={self.lambda_origin!r}")
    _momentum("momentum", self.momentum)
    _momentum("arch_momentum", self.arch_momentum)
    _positive("weight_decay", self.weight_decay, allow_zero=True)
    if not 0 < self.warmup_fraction < 1:
      raise ConfigError(
          f"--warmup_fraction must be in (0, 1); received {self.warmup_fraction!r}")
    _positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
    _positive("search_epochs", self.search_epochs)
    _positive("iterations", self.iterations)
    _choice("hessian", self.hessian, HESSIAN_METHODS)
    _positive("hessian_batches", self.hessian_batches)
    _choice("dependency", self.dependency, DEPENDENCIES)
    _choice("init", self.init, INITS)
    _positive("prune_threshold", self.prune_threshold)
    _positive("grad_clip", self.grad_clip, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """Where and how a run executes.

  Attributes:
    model_dir: outputs and checkpoints.
    strategy: tf.distribute strategy name.
    logical_cpu_devices: split the CPU into N logical devices (0 = off),
      e.g. to run `mirrored` on one machine without GPUs.
    seed: seeds weights, data order, augmentation and the prior init.
    deterministic: TF op determinism (`enable_op_determinism`).
    jit_compile: XLA-compile the step functions.
    dtype_policy: Keras dtype policy of the networks: "float32",
      "mixed_bfloat16" or "mixed_float16" (GPU only; loss scaled).
      Variables, the Hessian, the prior and the penalty stay float32/64
      (precision.py).
    recompute_cells: recompute each supernet cell's activations in the
      backward pass of a training step instead of keeping them (less
      memory, same numbers; recompute.py).
    checkpoint_every: steps between checkpoints (phase ends always save).
    keep_checkpoints: how many checkpoints to keep.
    progress: show progress bars (only when stdout is a terminal).
    log_every: steps between plain progress log lines when no bar is shown
      (0: one line at the end of each phase only).
    tpu: --strategy=tpu: a TPU name or grpc:// address ("": this TPU VM).
    worker_hosts, task_index: --strategy=multi_worker_mirrored without
      TF_CONFIG: "host1:port1,host2:port2" and this worker's index in it.
    inter_op_threads, intra_op_threads: TensorFlow's thread pools (0: TF's
      default; None: chosen per mode, threads.py).
  """
  model_dir: str = "runs/search"
  strategy: str = "default"
  logical_cpu_devices: int = 0
  seed: int = 0
  deterministic: bool = False
  jit_compile: bool = False
  dtype_policy: str = "float32"
  recompute_cells: bool = False
  checkpoint_every: int = 100
  keep_checkpoints: int = 2
  progress: bool = True
  log_every: int = 50
  tpu: str = ""
  worker_hosts: str = ""
  task_index: int = 0
  inter_op_threads: Optional[int] = None
  intra_op_threads: Optional[int] = None

  def validate(self) -> None:
    if not self.model_dir:
      raise ConfigError("--model_dir must not be empty")
    _choice("strategy", self.strategy, STRATEGIES)
    _choice("dtype_policy", self.dtype_policy, DTYPE_POLICIES)
    _positive("logical_cpu_devices", self.logical_cpu_devices, allow_zero=True)
    _positive("seed", self.seed, allow_zero=True)
    _positive("checkpoint_every", self.checkpoint_every)
    _positive("keep_checkpoints", self.keep_checkpoints)
    _positive("log_every", self.log_every, allow_zero=True)
    _positive("task_index", self.task_index, allow_zero=True)
    for name in ("inter_op_threads", "intra_op_threads"):
      if getattr(self, name) is not None:
        _positive(name, getattr(self, name), allow_zero=True)
    if self.tpu and self.strategy != "tpu":
      raise ConfigError(f"--tpu={self.tpu} needs --strategy=tpu")
    if (self.worker_hosts or self.task_index) and (
        self.strategy != "multi_worker_mirrored"):
      raise ConfigError("--worker_hosts/--task_index need "
                        "--strategy=multi_worker_mirrored")


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
    _choice("variant", self.variant, VARIANTS)
    if self.cells < 3:
      raise ConfigError(f"--cells must be at least 3; received cells={self.cells}")
    if self.channels < 2:
      raise ConfigError(f"--channels must be at least 2; received channels={self.channels}")
    _positive("epochs", self.epochs)
    _positive("learning_rate", self.learning_rate)
    _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
    if not 0 < self.lr_decay <= 1:
      raise ConfigError(f"--lr_decay must be in (0, 1]; received {self.lr_decay!r}")
    _momentum("momentum", self.momentum)
    _positive("weight_decay", self.weight_decay, allow_zero=True)
    _positive("grad_clip", self.grad_clip, allow_zero=True)
    _choice("drop_path", self.drop_path, DROP_PATHS)
    if not 0 <= self.drop_prob < 1:
      raise ConfigError(f"--drop_prob must be in [0, 1); received {self.drop_prob!r}")
    _positive("auxiliary_weight", self.auxiliary_weight, allow_zero=True)
    if not 0 <= self.label_smoothing < 1:
      raise ConfigError(
          f"--label_smoothing must be in [0, 1); received {self.label_smoothing!r}")
    _positive("image_size", self.image_size, allow_zero=True)


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
    _choice("architecture", self.architecture, COMPRESS_ARCHITECTURES)
    if self.base_model is not None and not self.base_model.endswith(".keras"):
      raise ConfigError(
          f"--base_model must be a .keras file; received {self.base_model!r}")
    _positive("vgg_width", self.vgg_width)
    if not self.groups:
      raise ConfigError(f"--groups needs at least one of {', '.join(GROUPINGS)}")
    for group in self.groups:
      _choice("groups", group, GROUPINGS)
    _positive("lambda_group", self.lambda_group)
    _positive("iterations", self.iterations)
    _positive("pretrain_epochs", self.pretrain_epochs, allow_zero=True)
    _positive("epochs_per_iteration", self.epochs_per_iteration)
    _positive("finetune_epochs", self.finetune_epochs, allow_zero=True)
    _positive("learning_rate", self.learning_rate)
    if self.pretrain_learning_rate is not None:
      _positive("pretrain_learning_rate", self.pretrain_learning_rate)
    _momentum("momentum", self.momentum)
    _positive("weight_decay", self.weight_decay, allow_zero=True)
    _choice("hessian", self.hessian, COMPRESS_HESSIAN_METHODS)
    _positive("hessian_batches", self.hessian_batches)
    _positive("prune_threshold", self.prune_threshold)


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


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Searched against random cells (--mode=study, bayesnas_tf/study.py).

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
  """
  study_seeds: int = 3
  random_per_seed: int = 2
  study_reference: Tuple[str, ...] = ("bayesnas_l0.01",)
  retrain_cells: int = 8
  retrain_channels: int = 16
  retrain_epochs: int = 10
  retrain_learning_rate: float = 0.05
  retrain_batch_size: int = 64

  def validate(self) -> None:
    _positive("study_seeds", self.study_seeds)
    _positive("random_per_seed", self.random_per_seed, allow_zero=True)
    if self.retrain_cells < 3:
      raise ConfigError(
          f"--retrain_cells must be at least 3; received {self.retrain_cells}")
    _positive("retrain_channels", self.retrain_channels)
    _positive("retrain_epochs", self.retrain_epochs)
    _positive("retrain_learning_rate", self.retrain_learning_rate)
    _positive("retrain_batch_size", self.retrain_batch_size)


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
    _choice("mode", self.mode, MODES)
    # Only the sections this mode reads: a flag sets its field in every
    # section that has one (e.g. --hessian in search and compress), and a
    # value valid for the running mode may be invalid for another one
    # (--mode=search --hessian=exact, which compress does not offer).
    for section in MODE_SECTIONS[self.mode]:
      getattr(self, section).validate()
    if self.mode == "search":
      from bayesnas_tf import tree_space  # pylint: disable=g-import-not-at-top
      tree_space.check_tree_hessian(self.supernet.search_space, self.search.hessian)
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
      for name in ("primitives", "groups", "study_reference"):
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
  _choice("mode", mode, MODES)
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
      **DATASET_DEFAULTS.get((mode, dataset), {}), **given}
  sections = {}
  for section in SECTIONS:
    current = getattr(config, section)
    updates = {f.name: _checked_value(f.name, annotations[f.name], layered[f.name])
               for f in dataclasses.fields(current) if f.name in layered}
    sections[section] = dataclasses.replace(current, **updates)
  return dataclasses.replace(config, **sections).validate()
