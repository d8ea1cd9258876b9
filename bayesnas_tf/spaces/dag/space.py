"""Search spaces as data: the cell DAGs a supernet is built from (DESIGN.md 4).

A cell has two inputs, `in0` (the output of cell k-1, after its CReduct) and
`in1` (cell k-2), and `num_nodes` intermediate nodes `n0..n{K-1}`; its output
is the concatenation of all intermediate nodes. Every edge `(src, dst)` carries
one `SwitchedEdge` with all primitives. Edges that leave a cell input of a
reduction cell have stride 2.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from bayesnas_tf.errors import ConfigError

CELL_INPUTS = ("in0", "in1")
CELL_TYPES = ("normal", "reduce")

Edge = Tuple[str, str]  # (source, destination)


def node_name(index: int) -> str:
  return f"n{index}"


def node_index(name: str) -> int:
  return int(name[1:])


def is_cell_input(name: str) -> bool:
  return name in CELL_INPUTS


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """The DAG of one cell type.

  Attributes:
    num_nodes: number of intermediate nodes; the output concatenates them all.
    edges: `(src, dst)` pairs in evaluation order. `src` is `in0`, `in1` or an
      earlier node; `dst` is a node.
  """

  num_nodes: int
  edges: Tuple[Edge, ...]

  def __post_init__(self):
    nodes = [node_name(i) for i in range(self.num_nodes)]
    seen = set()
    for src, dst in self.edges:
      if dst not in nodes:
        raise ConfigError(f"edge ({src}, {dst}): destination must be one of {nodes}")
      valid_sources = CELL_INPUTS + tuple(nodes[:node_index(dst)])
      if src not in valid_sources:
        raise ConfigError(
            f"edge ({src}, {dst}): source must be one of {list(valid_sources)}")
      if (src, dst) in seen:
        raise ConfigError(f"edge ({src}, {dst}) is listed twice")
      seen.add((src, dst))
    for node in nodes:
      if not any(dst == node for _, dst in self.edges):
        raise ConfigError(f"node {node} has no incoming edge")

  @property
  def nodes(self) -> Tuple[str, ...]:
    return tuple(node_name(i) for i in range(self.num_nodes))

  @property
  def edge_names(self) -> Tuple[str, ...]:
    return tuple(f"{src}->{dst}" for src, dst in self.edges)

  def edges_into(self, node: str) -> Tuple[int, ...]:
    return tuple(i for i, (_, dst) in enumerate(self.edges) if dst == node)

  def predecessor_edges(self, edge_index: int) -> Tuple[int, ...]:
    """Edges entering the source of an edge (empty when it leaves an input).

    These are the i' < j terms of eq. 8: the switches of every op on an edge
    that enters node i control the edges that leave node i.
    """
    src = self.edges[edge_index][0]
    if is_cell_input(src):
      return ()
    return self.edges_into(src)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  name: str
  normal: CellSpec
  reduce: CellSpec

  def cell(self, cell_type: str) -> CellSpec:
    if cell_type not in CELL_TYPES:
      raise ValueError(f"cell_type must be one of {CELL_TYPES}; got {cell_type!r}")
    return self.normal if cell_type == "normal" else self.reduce


def _darts_edges(num_nodes: int) -> Tuple[Edge, ...]:
  edges = []
  for j in range(num_nodes):
    for src in CELL_INPUTS + tuple(node_name(i) for i in range(j)):
      edges.append((src, node_name(j)))
  return tuple(edges)


# The official 8-edge sparse DAGs (ALGORITHM.md 1.2, search/OneShot.py), in the
# order of `Algorithm.norm_op_names` / `reduct_op_names`. The normal cell's
# in1 -> n3 edge reads in1 here; the official forward pass feeds it in0 by
# mistake while its Hessian and every released cell treat it as in1.
BAYESNAS_SPACE = SearchSpace(
    name="bayesnas",
    normal=CellSpec(4, (
        ("in0", "n0"), ("in1", "n0"),   # in0_0, in1_0
        ("in0", "n1"), ("in1", "n1"),   # in0_1, in1_1
        ("in0", "n2"), ("in1", "n2"),   # in0_2, in1_2
        ("in1", "n3"), ("n0", "n3"),    # in1_3, sel_0_3
    )),
    reduce=CellSpec(4, (
        ("in0", "n0"), ("in1", "n0"),   # in0_0, in1_0
        ("in1", "n1"), ("n0", "n1"),    # in1_1, sel_0_1
        ("in1", "n2"), ("n0", "n2"),    # in1_2, sel_0_2
        ("in1", "n3"), ("n0", "n3"),    # in1_3, sel_0_3
    )),
)

# The complete 14-edge DAG of DARTS, for users who expect it (DESIGN.md 4).
DARTS_SPACE = SearchSpace(
    name="darts", normal=CellSpec(4, _darts_edges(4)),
    reduce=CellSpec(4, _darts_edges(4)))

SEARCH_SPACES: Dict[str, SearchSpace] = {
    space.name: space for space in (BAYESNAS_SPACE, DARTS_SPACE)}


def get_search_space(name: str) -> SearchSpace:
  try:
    return SEARCH_SPACES[name]
  except KeyError:
    raise ConfigError(
        f"unknown search space {name!r}; valid search spaces are "
        f"{', '.join(SEARCH_SPACES)}") from None


def reduction_positions(num_cells: int) -> Tuple[int, ...]:
  """Indices of the reduction cells: at 1/3 and 2/3 of the depth.

  8 cells -> (2, 5) (the search net N N R N N R N N); 20 -> (6, 13) (after
  normal cells 5 and 11); 14 -> (4, 9) (ImageNet, after normal cells 3 and 7).
  """
  if num_cells < 3:
    raise ConfigError(
        f"a network needs at least 3 cells (one normal, two reduction); "
        f"received cells={num_cells}")
  return (num_cells // 3, 2 * num_cells // 3)
