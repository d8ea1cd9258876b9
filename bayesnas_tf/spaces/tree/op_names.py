"""The op names of the tree cells, without TensorFlow: genotypes are checked
against these before TensorFlow loads.

`ops.TREE_OPS` / `ops.PRE_EDGES` build the layers under exactly these names,
in this order (they check it when imported).
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from bayesnas_tf.spaces.base import check_known

# Tree-cell edge ops (PROXYLESS.md 1.4); candidate order of the ProxylessNAS
# space.
TREE_OP_NAMES: Tuple[str, ...] = (
    "identity", "sep3", "sep5", "sep7", "dil_sep3", "avg3", "max3", "conv1x1",
    "gconv3")

# Cell-level pre-edges of tree cells: output channels as a multiple of C.
PRE_EDGE_WIDTH: Dict[str, int] = {"gconv3_x2": 2}


def check_tree_ops(names: Sequence[str]) -> Tuple[str, ...]:
  """Validates a list of tree-cell op names."""
  return check_known(names, TREE_OP_NAMES, "tree op")
