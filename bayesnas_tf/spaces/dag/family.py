"""The DAG-cell family: the proxy search of the paper (Sec. 6.1).

`--search_space=bayesnas` (the official 8-edge cells, the default) and
`darts` (14 edges): a `SuperNet` of `BayesCell`s, one gate group per cell
type (normal, reduce); genotypes of normal and reduction cells
(genotype.py, files without "kind"); the CIFAR or ImageNet `ChildNetwork`
of the found cells. TensorFlow-free at import (spaces/base.py).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces import base
from bayesnas_tf.spaces.dag import sampling
from bayesnas_tf.spaces.dag import visualize
from bayesnas_tf.spaces.dag.derive import derive_genotype
from bayesnas_tf.spaces.dag.genotype import CELL_TYPES
from bayesnas_tf.spaces.dag.genotype import Genotype
from bayesnas_tf.spaces.dag.genotype import KNOWN_GENOTYPES
from bayesnas_tf.spaces.dag.op_names import PRIMITIVES
from bayesnas_tf.spaces.dag.op_names import check_primitives
from bayesnas_tf.spaces.dag.space import SEARCH_SPACES
from bayesnas_tf.spaces.dag.space import get_search_space

# Every gate Hessian estimator; diag_backprop's shadow network walks the
# SuperNet's layers (diag_backprop.py).
HESSIAN_METHODS = ("ggn", "ggn_mc", "exact", "diag_backprop")


class CellSearchBackend(base.SearchBackend):
  """The proxy search: `SuperNet` of `BayesCell`s, gates grouped per type."""

  def __init__(self, config: "ExperimentConfig"):
    self.config = config
    net = config.supernet
    self.space = get_search_space(net.search_space)
    self.gate_names: Tuple[str, ...] = tuple(net.primitives) + ("all",)

  def gate_lambdas(self) -> np.ndarray:
    search = self.config.search
    return base.op_and_edge_lambdas(len(self.config.supernet.primitives),
                                    search.lambda_child,
                                    search.effective_lambda_origin)

  def build_network(self, num_classes: int, image_shape, name: str = "supernet"):
    from bayesnas_tf.spaces.dag.supernet import SuperNet  # pylint: disable=g-import-not-at-top
    net_cfg = self.config.supernet
    net = SuperNet(num_classes, net_cfg.cells, net_cfg.channels,
                   net_cfg.search_space, net_cfg.primitives,
                   net_cfg.stem_multiplier,
                   recompute_cells=self.config.runtime.recompute_cells,
                   name=name)
    net.build((None,) + tuple(image_shape))
    return net

  def metadata(self) -> Dict[str, Any]:
    return {"cells": self.config.supernet.cells,
            "channels": self.config.supernet.channels}

  def derive(self, kept: Mapping[str, np.ndarray], posterior: Mapping[str, Any],
             metadata: Mapping[str, Any]) -> Genotype:
    del posterior  # Every kept op is kept (ALGORITHM.md 3.6): no ranking.
    return derive_genotype(self.space, self.config.supernet.primitives, kept,
                           "conv", metadata)

  def write_pictures(self, genotype: Genotype, out_dir: str):
    return visualize.write_cell_pictures(genotype, out_dir)

  def kept_ops(self, masks: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Op gates still kept per cell type (the last column is w_all)."""
    return {t: int(m[:, :-1].sum()) for t, m in masks.items()}

  def summary(self, net) -> Dict[str, int]:
    from bayesnas_tf.nn.init import count_params  # pylint: disable=g-import-not-at-top
    return {"trainable_params": count_params(net.trainable_variables),
            "gates": net.num_gates}


class DagFamily(base.SearchSpaceFamily):
  """The DAG cells of the proxy search (module doc)."""

  name = "dag"
  space_names = tuple(SEARCH_SPACES)
  genotype_kind = "cells"
  genotype_type = Genotype
  backend_type = CellSearchBackend
  builtins = KNOWN_GENOTYPES
  supported_hessians = HESSIAN_METHODS
  primitives = PRIMITIVES

  def check_supernet(self, supernet: "SupernetConfig") -> None:
    base.refuse_unset_options(supernet, base.GATE_AND_BN_OPTIONS, self.name)
    if supernet.cells < 3:
      raise ConfigError(
          f"--cells must be at least 3 (one normal and two reduction cells); "
          f"received cells={supernet.cells}")
    check_primitives(supernet.primitives)

  def pictures(self, genotype: Genotype) -> Tuple[Dict[str, bytes], Optional[str]]:
    reason = visualize.png_skip_reason()
    if reason is not None:
      return {}, reason
    return {t: visualize.render_png(visualize.genotype_to_dot(genotype, t))
            for t in CELL_TYPES}, None

  def build_child_network(self, train: "TrainConfig", genotype: Genotype,
                          num_classes: int, image_shape: Sequence[int]):
    from bayesnas_tf.spaces.dag.child_net import ChildNetwork  # pylint: disable=g-import-not-at-top
    model = ChildNetwork(genotype, num_classes=num_classes, cells=train.cells,
                         channels=train.channels, variant=train.variant,
                         drop_path=train.drop_path, auxiliary=train.auxiliary,
                         name="child_network")
    model.build((None,) + tuple(image_shape))
    return model

  def op_counts(self, genotype: Genotype) -> Dict[str, int]:
    return sampling.kept_op_counts(genotype)

  def check_study(self, space_name: str) -> None:
    del space_name  # Every DAG space has random genotypes.

  def random_genotype_like(self, genotype: Genotype, supernet: "SupernetConfig",
                           rng, metadata: Optional[Mapping[str, Any]] = None
                           ) -> Genotype:
    return sampling.random_genotype(
        get_search_space(supernet.search_space), supernet.primitives,
        sampling.kept_op_counts(genotype), rng, metadata)


FAMILY = DagFamily()
