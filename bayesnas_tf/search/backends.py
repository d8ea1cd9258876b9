"""What the search loop needs to know about the network it searches.

The loop of search_loop.py (warm-up, joint epoch, Hessian, update, prune,
checkpoints, outputs) is the same for every search; what differs is

* the network and its gate layout (the column names of the prior's (E, G)
  arrays and their lambdas),
* the cell DAG that the prior's predecessors and posterior names come from
  (`space.cell(cell_type)`),
* how kept masks become a genotype, and the pictures written beside it.

`CellSearchBackend` is the proxy search of Sec. 6.1 (`SuperNet` of DAG
cells, one gate group per cell type). `TreeSearchBackend` is the proxyless
search of Sec. 6.2 (`PyramidTreeSuperNet`; every block's cell is its own
type with n = 1, PROXYLESS.md 3). `search_backend(config)` picks one from
`--search_space`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from bayesnas_tf import visualize
from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.search import prior as prior_lib
from bayesnas_tf.search.derive import derive_genotype
from bayesnas_tf.search_space import get_search_space
from bayesnas_tf.tree_genotype import PyramidBackbone
from bayesnas_tf.tree_space import check_tree_hessian, get_tree_space
from bayesnas_tf.tree_space import is_tree_space

def count_params(variables) -> int:
  return int(sum(int(np.prod(v.shape)) for v in variables))


class CellSearchBackend:
  """The proxy search: `SuperNet` of `BayesCell`s, gates grouped per type."""

  def __init__(self, config: ExperimentConfig):
    self.config = config
    net = config.supernet
    self.space = get_search_space(net.search_space)
    self.gate_names: Tuple[str, ...] = tuple(net.primitives) + ("all",)

  def gate_lambdas(self) -> np.ndarray:
    search = self.config.search
    return prior_lib.gate_lambdas(len(self.config.supernet.primitives),
                                  search.lambda_child,
                                  search.effective_lambda_origin)

  def build_network(self, num_classes: int, image_shape, name: str = "supernet"):
    from bayesnas_tf.models.supernet import SuperNet  # pylint: disable=g-import-not-at-top
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

  def derive(self, kept: Mapping[str, np.ndarray], metadata: Mapping[str, Any]):
    return derive_genotype(self.space, self.config.supernet.primitives, kept,
                           "conv", metadata)

  def write_pictures(self, genotype, out_dir: str):
    return visualize.write_cell_pictures(genotype, out_dir)

  def kept_ops(self, masks: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Op gates still kept per cell type (the last column is w_all)."""
    return {t: int(m[:, :-1].sum()) for t, m in masks.items()}

  def summary(self, net) -> Dict[str, int]:
    return {"trainable_params": count_params(net.trainable_variables),
            "gates": net.num_gates}


class TreeSearchBackend:
  """The proxyless search: tree cells in a bottleneck PyramidNet.

  Lambdas: reading A's single gate per edge (an op and its edge gate merged)
  takes `lambda_child`, the paper's "lambda per path" (BN L297); reading B's
  op gates take `lambda_child` and its edge gates `lambda_origin`, as in the
  proxy search.
  """

  def __init__(self, config: ExperimentConfig):
    self.config = config
    net = config.supernet
    check_tree_hessian(net.search_space, config.search.hessian)
    self.space = get_tree_space(net.search_space)
    self.gate_names = self.space.gate_names
    self.backbone = PyramidBackbone(net.depth_blocks, net.alpha, net.start_planes)

  def gate_lambdas(self) -> np.ndarray:
    search = self.config.search
    if self.space.gate_kind == "single":
      return np.array([search.lambda_child], dtype=np.float64)
    return prior_lib.gate_lambdas(len(self.space.candidates), search.lambda_child,
                                  search.effective_lambda_origin)

  def build_network(self, num_classes: int, image_shape, name: str = "supernet"):
    from bayesnas_tf.models.pyramid_tree import PyramidTreeSuperNet  # pylint: disable=g-import-not-at-top
    net_cfg = self.config.supernet
    net = PyramidTreeSuperNet(num_classes, net_cfg.search_space,
                              net_cfg.depth_blocks, net_cfg.alpha,
                              net_cfg.start_planes, name=name)
    net.build((None,) + tuple(image_shape))
    return net

  def metadata(self) -> Dict[str, Any]:
    net_cfg = self.config.supernet
    return {"depth_blocks": net_cfg.depth_blocks, "alpha": net_cfg.alpha,
            "start_planes": net_cfg.start_planes}

  def derive(self, kept: Mapping[str, np.ndarray], metadata: Mapping[str, Any]):
    from bayesnas_tf.search.tree_derive import derive_tree_genotype  # pylint: disable=g-import-not-at-top
    return derive_tree_genotype(self.space, self.backbone, kept, metadata)

  def write_pictures(self, genotype, out_dir: str):
    from bayesnas_tf import tree_visualize  # pylint: disable=g-import-not-at-top
    return tree_visualize.write_tree_pictures(genotype, out_dir)

  def kept_ops(self, masks: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Ops still kept per block (an op counts while its edge gate is kept)."""
    if self.space.gate_kind == "single":
      return {t: int(m.sum()) for t, m in masks.items()}
    return {t: int((m[:, :-1] & m[:, -1:]).sum()) for t, m in masks.items()}

  def summary(self, net) -> Dict[str, int]:
    return {"trainable_params": count_params(net.trainable_variables),
            "weight_params": count_params(net.weight_variables),
            "gates": net.num_gates}


def search_backend(config: ExperimentConfig):
  """The backend of `--search_space` (a DAG cell space or a tree space)."""
  if is_tree_space(config.supernet.search_space):
    return TreeSearchBackend(config)
  return CellSearchBackend(config)
