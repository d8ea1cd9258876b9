"""The op names of both search spaces, without TensorFlow: flags, configs and
genotypes are checked against these before TensorFlow loads (a mistyped
flag is answered in under a second).

`ops.OPS` and `tree_ops.TREE_OPS` / `tree_ops.PRE_EDGES` build the layers
under exactly these names, in this order (they check it when imported).
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from bayesnas_tf.errors import ConfigError

# DARTS-style primitives (ALGORITHM.md 1.1), in gate order; names follow the
# genotype notation of ALGORITHM.md 6.
PRIMITIVES: Tuple[str, ...] = ("sep3", "sep5", "dil3", "dil5", "max", "avg", "id")

# Tree-cell edge ops (PROXYLESS.md 1.4); candidate order of the ProxylessNAS
# space.
TREE_OP_NAMES: Tuple[str, ...] = (
    "identity", "sep3", "sep5", "sep7", "dil_sep3", "avg3", "max3", "conv1x1",
    "gconv3")

# Cell-level pre-edges of tree cells: output channels as a multiple of C.
PRE_EDGE_WIDTH: Dict[str, int] = {"gconv3_x2": 2}

def _check_known(names: Sequence[str], valid: Sequence[str],
                 kind: str) -> Tuple[str, ...]:
  """`names` as a tuple; raises if one is not in `valid`."""
  names = tuple(names)
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise ConfigError(f"unknown {kind}(s) {', '.join(unknown)}; "
                      f"valid {kind}s are {', '.join(valid)}")
  return names


def check_primitives(names: Sequence[str]) -> Tuple[str, ...]:
  """Validates a list of primitive names against the registry."""
  names = _check_known(names, PRIMITIVES, "primitive")
  if not names:
    raise ConfigError(
        f"at least one primitive is needed; valid primitives are "
        f"{', '.join(PRIMITIVES)}")
  if len(set(names)) != len(names):
    raise ConfigError(f"primitives are listed twice: {', '.join(names)}")
  return names


def check_tree_ops(names: Sequence[str]) -> Tuple[str, ...]:
  """Validates a list of tree-cell op names."""
  return _check_known(names, TREE_OP_NAMES, "tree op")


def check_registry(registry: Sequence[str], names: Sequence[str], what: str) -> None:
  """Raises if a layer registry's names differ from (or reorder) `names`."""
  if tuple(registry) != tuple(names):
    raise ImportError(f"{what} registry {tuple(registry)} differs from "
                      f"op_names {tuple(names)}")
