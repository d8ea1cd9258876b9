"""Turns the search's kept-gate masks into a `Genotype` (ALGORITHM.md 3.6).

The official code leaves this step to the user ("replace the NormalCell and
ReductCell in cell.py manually"); here it is automatic. The rule is the
paper's Alg. 1 steps 4-5: every op whose gate survived pruning is kept, there
is no top-k, and all kept ops into a node are summed. An op survives only if
its edge gate `w_all` (the paper's i' node, Sec. 4.2) survived too, because
`w_all` multiplies the edge input of every op on the edge (ALGORITHM.md 1.1).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

from absl import logging
import numpy as np

from bayesnas_tf.spaces.dag.genotype import CELL_TYPES, Genotype, OpInput
from bayesnas_tf.spaces.dag.op_names import check_primitives
from bayesnas_tf.spaces.dag.space import CellSpec, SearchSpace


def _check_mask(cell_type: str, mask: Any, spec: CellSpec,
                num_primitives: int) -> np.ndarray:
  mask = np.asarray(mask)
  expected = (len(spec.edges), num_primitives + 1)
  if mask.shape != expected:
    raise ValueError(
        f"kept[{cell_type!r}] must have shape {expected} (one row per edge of "
        f"the {cell_type} cell; one column per primitive, then the edge gate); "
        f"received shape {mask.shape}")
  if mask.dtype != bool:
    # 0/1 masks (e.g. a float variable) are fine; anything else is probably
    # gamma or switch values passed by mistake.
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError(
          f"kept[{cell_type!r}] must be a boolean (or 0/1) mask; received "
          f"values other than 0 and 1")
    mask = mask != 0
  return mask


def _derive_cell(cell_type: str, spec: CellSpec, primitives: Sequence[str],
                 mask: np.ndarray) -> Tuple[Tuple[OpInput, ...], ...]:
  nodes: List[Tuple[OpInput, ...]] = []
  for node in spec.nodes:
    node_ops: List[OpInput] = []
    for e in spec.edges_into(node):
      src = spec.edges[e][0]
      if not mask[e, -1]:
        # w_all pruned: "the zero op rules all" (3.6), whatever the op gates.
        continue
      node_ops.extend((op, src) for o, op in enumerate(primitives)
                      if mask[e, o])
    nodes.append(tuple(node_ops))
  return tuple(nodes)


def _warn_degenerate(cell_type: str,
                     cell: Tuple[Tuple[OpInput, ...], ...]) -> None:
  """Logs the degenerate outcomes the official code ignores (3.6)."""
  if not any(cell):
    logging.warning(
        "every op of the %s cell was pruned; the cell outputs zeros", cell_type)
    return
  empty = {f"n{j}" for j, node in enumerate(cell) if not node}
  for j, node in enumerate(cell):
    if not node:
      logging.warning("node n%d of the %s cell lost every input; it outputs "
                      "zeros", j, cell_type)
  # An empty node still read by a later node's kept op: those ops were judged
  # useful on an input that will now be constant zero (e.g. n0 pruned while
  # sel_0_* survive, 3.6).
  for name in sorted(empty, key=lambda n: int(n[1:])):
    readers = [f"{op}->n{j}" for j, node in enumerate(cell)
               for op, src in node if src == name]
    if readers:
      logging.warning(
          "node %s of the %s cell has no input but feeds kept op(s) %s; they "
          "see zeros", name, cell_type, ", ".join(readers))


def derive_genotype(space: SearchSpace, primitives: Sequence[str],
                    kept: Mapping[str, np.ndarray], size_reduct: str = "conv",
                    search_metadata: Mapping[str, Any] | None = None
                    ) -> Genotype:
  """Builds the genotype of the ops that survived pruning.

  Args:
    space: the search space whose cells were searched.
    primitives: the op names of the supernet, in gate-column order.
    kept: for "normal" and "reduce", a bool array of shape
      (num_edges, len(primitives) + 1) in `CellSpec.edges` order; column o is
      op o's gate and the LAST column is the edge gate `w_all`. A network
      without reduction cells passes the normal mask for both.
    size_reduct: "conv" or "factorized" (ALGORITHM.md 5.1).
    search_metadata: provenance stored in `Genotype.search`.

  Returns:
    A valid `Genotype`: node j lists (op, src) for the edges entering j in
    `CellSpec.edges` order and, within an edge, in `primitives` order. Nodes
    without surviving inputs are kept empty (a child network feeds zeros
    there) and each degenerate outcome is logged as a warning.
  """
  primitives = check_primitives(primitives)
  missing = [t for t in CELL_TYPES if t not in kept]
  if missing:
    raise ValueError(
        f"kept needs a mask for both cell types {CELL_TYPES}; missing "
        f"{', '.join(missing)} (a network without reduction cells passes the "
        f"normal mask for both)")
  cells: Dict[str, Tuple[Tuple[OpInput, ...], ...]] = {}
  for cell_type in CELL_TYPES:
    spec = space.cell(cell_type)
    mask = _check_mask(cell_type, kept[cell_type], spec, len(primitives))
    cells[cell_type] = _derive_cell(cell_type, spec, primitives, mask)
    _warn_degenerate(cell_type, cells[cell_type])
  return Genotype(normal=cells["normal"], reduce=cells["reduce"],
                  size_reduct=size_reduct, search=search_metadata)
