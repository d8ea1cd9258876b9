"""Turns a tree search's kept-gate masks into a `TreeGenotype` (PROXYLESS.md 3.3).

Per block (its own cell type, n = 1), the gates that survived the prior's
update decide the ops of each edge:

* reading A ("single" gates): an edge keeps its op iff its gate is kept;
* reading B ("mixed" gates): an edge keeps every op whose gate is kept, and
  none when its edge gate `w_all` is pruned ("the zero op rules all",
  ALGORITHM.md 3.6); several kept ops are summed (rule 5);
* fixed (ungated) edges keep their op.

Then `space.prune_cell` applies rules 1-4: an op needs its parent edge,
an edge whose child lost every branch goes, a root branch keeps its skip,
and a cell with nothing left becomes None, i.e. its block is its shortcut
and the next block reads the narrower input.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from absl import logging
import numpy as np

from bayesnas_tf.spaces.tree.genotype import PyramidBackbone, TreeGenotype
from bayesnas_tf.spaces.tree.space import TreeCellSpec, TreeSearchSpace, block_name
from bayesnas_tf.spaces.tree.space import prune_cell, with_edge_ops


def _check_mask(cell_type: str, mask: Any, space: TreeSearchSpace) -> np.ndarray:
  mask = np.asarray(mask)
  expected = (len(space.edges), space.num_gates)
  if mask.shape != expected:
    raise ValueError(
        f"kept[{cell_type!r}] must have shape {expected} (one row per gated edge "
        f"of the {space.name} cell, one column per gate); received {mask.shape}")
  if mask.dtype != bool:
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError(f"kept[{cell_type!r}] must be a boolean (or 0/1) mask")
    mask = mask != 0
  return mask


def derive_cell(space: TreeSearchSpace, mask) -> Optional[TreeCellSpec]:
  """The derived cell of one block from its (E, G) kept mask, or None."""
  mask = _check_mask("cell", mask, space)
  edge_ops: Dict[str, List[str]] = {}
  for e, edge in enumerate(space.edges):
    candidates = space.template.branch(edge).ops
    if space.gate_kind == "single":
      edge_ops[edge] = list(candidates) if mask[e, 0] else []
    else:
      edge_ops[edge] = ([op for o, op in enumerate(candidates) if mask[e, o]]
                        if mask[e, -1] else [])
  return prune_cell(with_edge_ops(space.template, edge_ops))


def derive_tree_genotype(space: TreeSearchSpace, backbone: PyramidBackbone,
                         kept: Mapping[str, np.ndarray],
                         search_metadata: Mapping[str, Any] | None = None
                         ) -> TreeGenotype:
  """Builds the network of the surviving paths of every block.

  Args:
    space: the searched tree space.
    backbone: the searched PyramidNet.
    kept: per block cell type ("block_01", ...), the (E, G) kept mask in
      `space.edges` x `space.gate_names` order.
    search_metadata: provenance stored in `TreeGenotype.search`.
  """
  cells = []
  for index in range(backbone.num_blocks):
    cell_type = block_name(index)
    if cell_type not in kept:
      raise ValueError(f"kept has no mask for {cell_type}; it needs one per block")
    cells.append(derive_cell(space, _check_mask(cell_type, kept[cell_type], space)))
  genotype = TreeGenotype(backbone, tuple(cells), space.name, search_metadata)
  removed = genotype.removed_blocks()
  if removed:
    logging.warning(
        "every path of block(s) %s was pruned; they are their shortcut only and "
        "the next block reads the narrower input", removed)
  logging.info("kept edges per block: %s", genotype.kept_edges())
  return genotype
