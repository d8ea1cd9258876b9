"""The NAS-Bench-201 cell space as data (../shared/NB201.md, "The cell").

A cell has 4 nodes: node 0 is its single input (the previous cell's output),
node j = sum over i < j of op_{i->j}(node i), node 3 is its output. Every one
of the 6 edges carries exactly one of 5 ops; `none` (the zero op) is what an
edge becomes when it is pruned whole, so the search gates the other four.

Edges are listed in the benchmark's string order (node by node, sources
ascending), which is also a topological order: every edge comes after the
edges that enter its source (the prior's eq. 8 walks them in this order).

This module is TensorFlow-free: flags and genotype strings are checked with
it before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

NONE = "none"
# The benchmark's op names (AutoDL-Projects `cell_operations.py`), in gate
# order: the four ops a search edge carries. `none` is not gated: it is the
# edge gate w_all switched off (the paper's Sec. 4.2 "zero operation ruling
# all").
OPS: Tuple[str, ...] = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                        "avg_pool_3x3")
ALL_OPS: Tuple[str, ...] = (NONE,) + OPS
NUM_NODES = 4
EDGES: Tuple[Tuple[int, int], ...] = tuple(
    (i, j) for j in range(1, NUM_NODES) for i in range(j))
# The one cell type: every cell position of the network shares it, so a gate
# group (eq. 21) is one (edge, op) across all 3N cells.
CELL_TYPE = "cell"
SPACE_NAME = "nb201"


def edge_name(edge: Tuple[int, int]) -> str:
  return f"{edge[0]}->{edge[1]}"


@dataclasses.dataclass(frozen=True)
class NB201CellSpec:
  """The cell DAG in the form the prior reads (`edges`, `predecessor_edges`).

  Edge sources and destinations are node indices; node 0 is the input.
  """

  edges: Tuple[Tuple[int, int], ...] = EDGES

  @property
  def edge_names(self) -> Tuple[str, ...]:
    return tuple(edge_name(e) for e in self.edges)

  def edges_into(self, node: int) -> Tuple[int, ...]:
    return tuple(k for k, (_, dst) in enumerate(self.edges) if dst == node)

  def predecessor_edges(self, edge_index: int) -> Tuple[int, ...]:
    """The edges entering the source of an edge (none for the input node).

    eq. 8's i' < j terms on this DAG: node 1 has the single input edge 0->1,
    so pruning 0->1 switches off 1->2 and 1->3 (Proposition 1).
    """
    src = self.edges[edge_index][0]
    return () if src == 0 else self.edges_into(src)


CELL_SPEC = NB201CellSpec()


@dataclasses.dataclass(frozen=True)
class NB201Space:
  """The search space object the search loop reads (`cell(cell_type)`)."""

  name: str = SPACE_NAME

  def cell(self, cell_type: str) -> NB201CellSpec:
    if cell_type != CELL_TYPE:
      raise ValueError(f"the nb201 space has one cell type, {CELL_TYPE!r}; "
                       f"got {cell_type!r}")
    return CELL_SPEC


SPACE = NB201Space()
