"""The tree-cell family: the proxyless search of the paper (Sec. 6.2).

`--search_space=treecell_a` (TreeCell-A's fixed ops, one gate per edge) and
`proxyless` (the ProxylessNAS tree, 7 candidates per edge): a bottleneck
PyramidNet whose every block holds its own gated tree cell
(`PyramidTreeSuperNet`, PROXYLESS.md 3); "pyramid_tree" genotypes that fix
the whole network (genotype.py); its `PyramidTreeNet`. TensorFlow-free at
import (spaces/base.py).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces import base
from bayesnas_tf.spaces.tree.derive import derive_tree_genotype
from bayesnas_tf.spaces.tree.genotype import BUILTIN_TREE_GENOTYPES
from bayesnas_tf.spaces.tree.genotype import KIND
from bayesnas_tf.spaces.tree.genotype import PyramidBackbone
from bayesnas_tf.spaces.tree.genotype import TreeGenotype
from bayesnas_tf.spaces.tree.space import TREE_HESSIAN_METHODS
from bayesnas_tf.spaces.tree.space import TREE_SPACES
from bayesnas_tf.spaces.tree.space import block_name
from bayesnas_tf.spaces.tree.space import get_tree_space
from bayesnas_tf.spaces.tree.space import pyramid_widths


class TreeSearchBackend(base.SearchBackend):
  """The proxyless search: tree cells in a bottleneck PyramidNet.

  Lambdas: reading A's single gate per edge (an op and its edge gate merged)
  takes `lambda_child`, the paper's "lambda per path" (BN L297); reading B's
  op gates take `lambda_child` and its edge gates `lambda_origin`, as in the
  proxy search.
  """

  def __init__(self, config: "ExperimentConfig"):
    self.config = config
    net = config.supernet
    FAMILY.check_hessian(net.search_space, config.search.hessian)
    self.space = get_tree_space(net.search_space)
    self.gate_names = self.space.gate_names
    self.backbone = PyramidBackbone(net.depth_blocks, net.alpha, net.start_planes)

  def gate_lambdas(self) -> np.ndarray:
    search = self.config.search
    if self.space.gate_kind == "single":
      return np.array([search.lambda_child], dtype=np.float64)
    return base.op_and_edge_lambdas(len(self.space.candidates),
                                    search.lambda_child,
                                    search.effective_lambda_origin)

  def build_network(self, num_classes: int, image_shape, name: str = "supernet"):
    from bayesnas_tf.spaces.tree.pyramid_tree import PyramidTreeSuperNet  # pylint: disable=g-import-not-at-top
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

  def derive(self, kept: Mapping[str, np.ndarray], posterior: Mapping[str, Any],
             metadata: Mapping[str, Any]) -> TreeGenotype:
    del posterior  # Every kept op is kept (PROXYLESS.md 3.3 rule 5).
    return derive_tree_genotype(self.space, self.backbone, kept, metadata)

  def write_pictures(self, genotype: TreeGenotype, out_dir: str):
    from bayesnas_tf.spaces.tree import visualize  # pylint: disable=g-import-not-at-top
    return visualize.write_tree_pictures(genotype, out_dir)

  def kept_ops(self, masks: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Ops still kept per block (an op counts while its edge gate is kept)."""
    if self.space.gate_kind == "single":
      return {t: int(m.sum()) for t, m in masks.items()}
    return {t: int((m[:, :-1] & m[:, -1:]).sum()) for t, m in masks.items()}

  def summary(self, net) -> Dict[str, int]:
    from bayesnas_tf.nn.init import count_params  # pylint: disable=g-import-not-at-top
    return {"trainable_params": count_params(net.trainable_variables),
            "weight_params": count_params(net.weight_variables),
            "gates": net.num_gates}


class TreeFamily(base.SearchSpaceFamily):
  """The tree cells of the proxyless search (module doc).

  The supernet is a PyramidNet of 3 x depth_blocks blocks widened by alpha
  from start_planes; --cells/--channels/--primitives/--stem_multiplier play
  no part in it.
  """

  name = "tree"
  space_names = tuple(TREE_SPACES)
  genotype_kind = KIND
  genotype_type = TreeGenotype
  backend_type = TreeSearchBackend
  builtins = BUILTIN_TREE_GENOTYPES
  supported_hessians = TREE_HESSIAN_METHODS

  def check_supernet(self, supernet: "SupernetConfig") -> None:
    base.refuse_unset_options(supernet, base.GATE_AND_BN_OPTIONS, self.name)
    alpha = supernet.alpha
    if not alpha >= 0 or (isinstance(alpha, float) and not math.isfinite(alpha)):
      raise ConfigError(f"--alpha must be >= 0; received alpha={alpha!r}")
    pyramid_widths(supernet.depth_blocks, alpha, supernet.start_planes)

  def build_child_network(self, train: "TrainConfig", genotype: TreeGenotype,
                          num_classes: int, image_shape: Sequence[int]):
    """The derived PyramidNet of a proxyless search (PROXYLESS.md 2, 3.3).

    The genotype fixes the whole network (backbone and every block's cell),
    so --cells/--channels/--drop_path/--auxiliary play no part; --drop_prob
    is the tree cells' path drop.
    """
    from bayesnas_tf.spaces.tree.pyramid_tree import PyramidTreeNet  # pylint: disable=g-import-not-at-top
    if train.variant != "cifar":
      raise ConfigError(
          f"a pyramid_tree genotype builds the CIFAR PyramidNet; it has no "
          f"--variant={train.variant} network (use --mode=retrain)")
    model = PyramidTreeNet(genotype, num_classes=num_classes, name="child_network")
    model.build((None,) + tuple(image_shape))
    return model

  def op_counts(self, genotype: TreeGenotype) -> Dict[str, int]:
    """Edges holding an op, per block."""
    return {block_name(i): n for i, n in enumerate(genotype.kept_edges())}


FAMILY = TreeFamily()
