"""The NAS-Bench-201 family: `--search_space=nb201` (../shared/NB201.md).

The supernet is the benchmark's macro network with gated cells
(`network.NB201SuperNet`): `--cells` cells per stage (the benchmark: 5),
C = `--channels` (16). All 3N cell positions share one cell type, so a gate
group is one (edge, op) across all cells. Each edge carries the four
non-zero ops under gates w plus its edge gate w_all (`--lambda_child` and
`--lambda_origin`, as in the DAG search); `none` is an edge pruned whole.
The genotype is one op per edge, the benchmark's string (genotype.py),
chosen by a posterior score (derive.py); `--benchmark_table` looks it up.
TensorFlow-free at import (spaces/base.py).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces import base
from bayesnas_tf.spaces import pictures
from bayesnas_tf.spaces.nb201 import derive as derive_lib
from bayesnas_tf.spaces.nb201 import space
from bayesnas_tf.spaces.nb201 import visualize
from bayesnas_tf.spaces.nb201.genotype import BUILTIN_GENOTYPES
from bayesnas_tf.spaces.nb201.genotype import KIND
from bayesnas_tf.spaces.nb201.genotype import NB201Genotype
from bayesnas_tf.spaces.nb201.genotype import looks_like_arch_string

# The gate Hessians of its supernet: diag_backprop's shadow network walks the
# DAG supernet's layers only.
HESSIAN_METHODS = ("ggn", "ggn_mc", "exact")


class NB201SearchBackend(base.SearchBackend):
  """The NB201 search: gates per (edge, op) shared by all cells."""

  def __init__(self, config: "ExperimentConfig"):
    self.config = config
    self.space = space.SPACE
    self.ops = space.OPS
    self.gate_names = self.ops + ("all",)
    # w(0) = 1/|O| unless --gate_init says otherwise (network.py says why).
    gate_init = config.supernet.gate_init
    self.gate_init = 1.0 / len(self.ops) if gate_init is None else gate_init
    # The search cells' BNs have no scale or offset unless --bn_affine.
    self.bn_affine = bool(config.supernet.bn_affine)

  def gate_lambdas(self) -> np.ndarray:
    search = self.config.search
    return base.op_and_edge_lambdas(len(self.ops), search.lambda_child,
                                    search.effective_lambda_origin)

  def build_network(self, num_classes: int, image_shape, name: str = "supernet"):
    from bayesnas_tf.spaces.nb201.network import NB201SuperNet  # pylint: disable=g-import-not-at-top
    net_cfg = self.config.supernet
    net = NB201SuperNet(num_classes, net_cfg.cells, net_cfg.channels, self.ops,
                        bn_affine=self.bn_affine, gate_init=self.gate_init,
                        name=name)
    net.build((None,) + tuple(image_shape))
    return net

  def metadata(self) -> Dict[str, Any]:
    net_cfg = self.config.supernet
    return {"cells_per_stage": net_cfg.cells, "channels": net_cfg.channels,
            "bn_affine": self.bn_affine, "gate_init": self.gate_init,
            "op_score": self.config.search.op_score}

  def derive(self, kept: Mapping[str, np.ndarray], posterior: Mapping[str, Any],
             metadata: Mapping[str, Any]) -> NB201Genotype:
    scores = derive_lib.op_scores(posterior[space.CELL_TYPE],
                                  self.config.search.op_score)
    genotype = derive_lib.derive_nb201_genotype(
        kept[space.CELL_TYPE], scores, self.ops)
    provenance = dict(metadata)
    provenance["op_scores"] = derive_lib.chosen_scores(genotype, scores, self.ops)
    return NB201Genotype(genotype.ops, provenance)

  def write_pictures(self, genotype: NB201Genotype, out_dir: str):
    return visualize.write_cell_pictures(genotype, out_dir)

  def kept_ops(self, masks: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Ops still kept per cell type (an op counts while its edge gate is)."""
    return {t: int((m[:, :-1] & m[:, -1:]).sum())
            for t, m in ((t, np.asarray(m) > 0.5) for t, m in masks.items())}

  def summary(self, net) -> Dict[str, int]:
    from bayesnas_tf.nn.init import count_params  # pylint: disable=g-import-not-at-top
    return {"trainable_params": count_params(net.trainable_variables),
            "weight_params": count_params(net.weight_variables),
            "gates": net.num_gates}


class NB201Family(base.SearchSpaceFamily):
  """The NAS-Bench-201 cell space (module doc)."""

  name = "nb201"
  space_names = (space.SPACE_NAME,)
  genotype_kind = KIND
  genotype_type = NB201Genotype
  backend_type = NB201SearchBackend
  builtins = BUILTIN_GENOTYPES
  supported_hessians = HESSIAN_METHODS
  export_name = "nb201"
  benchmark = "NAS-Bench-201"

  def check_supernet(self, supernet: "SupernetConfig") -> None:
    if supernet.gate_init is not None and not supernet.gate_init > 0:
      raise ConfigError(f"--gate_init must be > 0; received "
                        f"gate_init={supernet.gate_init!r}")

  def mode_defaults(self, mode: str) -> Mapping[str, Any]:
    """The benchmark's sizes and the search recipe of README "NAS-Bench-201"
    for a search; the benchmark's training recipe (NB201.md, "How the
    table was made": 200 epochs, SGD momentum 0.9, lr 0.1 cosine, weight
    decay 5e-4, batch 256, crop and flip; no cutout, drop path or
    auxiliary head) for a retrain of an NB201 cell."""
    if mode in ("search", "study"):
      return SEARCH_DEFAULTS
    if mode == "retrain":
      return RETRAIN_DEFAULTS
    return {}

  def parse_genotype_text(self, text: str) -> Optional[NB201Genotype]:
    if looks_like_arch_string(text):
      return NB201Genotype.from_string(text)
    return None

  def benchmark_key(self, genotype: NB201Genotype) -> str:
    return genotype.arch

  def pictures(self, genotype: NB201Genotype) -> Tuple[Dict[str, bytes], Optional[str]]:
    reason = pictures.png_skip_reason()
    if reason is not None:
      return {}, reason
    return {space.CELL_TYPE: pictures.render_png(
        visualize.genotype_to_dot(genotype))}, None

  def build_child_network(self, train: "TrainConfig", genotype: NB201Genotype,
                          num_classes: int, image_shape: Sequence[int]):
    """The benchmark's network of an NB201 cell (NB201.md): --cells cells
    per stage, C = --channels; no drop path and no auxiliary head."""
    from bayesnas_tf.spaces.nb201.network import NB201Network  # pylint: disable=g-import-not-at-top
    if train.variant != "cifar":
      raise ConfigError(
          f"an NB201 genotype builds the benchmark's CIFAR network; it has no "
          f"--variant={train.variant} network (use --mode=retrain)")
    if train.drop_prob or train.auxiliary:
      raise ConfigError(
          "the NB201 network has no drop path and no auxiliary head (the "
          "benchmark trains without them); pass --drop_prob=0 --noauxiliary")
    model = NB201Network(genotype, num_classes=num_classes,
                         cells_per_stage=train.cells, channels=train.channels,
                         name="child_network")
    model.build((None,) + tuple(image_shape))
    return model

  def op_counts(self, genotype: NB201Genotype) -> Dict[str, int]:
    """Edges that hold an op (not `none`)."""
    return {space.CELL_TYPE: sum(op != space.NONE for op in genotype.ops)}


# Set from the measurements of README "NAS-Bench-201" (its ablation table);
# every value is a flag, and flags/search_nb201_paper.flags restores the
# paper's. Why each one:
# - warm-up: half the data for 8 epochs before the first update. After the
#   paper's 10% x 1 epoch, parameter-free ops (right from the first step)
#   hold the larger gates and the cell keeps them (88.20 on the table).
# - 3 joint epochs on the other half: the gates settle before they are judged.
# - batch 64: 3.6x fewer steps per epoch than 18, so the longer warm-up
#   fits the 30-minute budget on 2 cores.
# - op_score "snr" (derive.py): w^2 over the posterior variance, about what
#   removing the op costs the loss. gamma follows the trained gate norm,
#   which skip wins on the input edges (93.31 with gamma on the same runs).
SEARCH_DEFAULTS: Dict[str, Any] = {
    "cells": 5, "channels": 16, "batch_size": 64, "warmup_fraction": 0.5,
    "warmup_epochs": 8, "search_epochs": 3, "op_score": "snr"}
RETRAIN_DEFAULTS: Dict[str, Any] = {
    "cells": 5, "channels": 16, "epochs": 200, "learning_rate": 0.1,
    "weight_decay": 5e-4, "batch_size": 256, "cutout": 0, "drop_prob": 0.0,
    "grad_clip": 0.0, "auxiliary": False}

FAMILY = NB201Family()
