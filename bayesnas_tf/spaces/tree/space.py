"""Tree cells and the PyramidNet widths, as data (PROXYLESS.md 1-2).

A tree cell is a `TreeCellSpec`: an optional cell-level pre-edge, then a
root `TreeNodeSpec`. A node hands its input to its branches (`copy`: all of
it; `split`: consecutive channel slices of size floor(C/k), the first C mod k
one wider) and merges their outputs (`add` or `concat`). A branch is an edge
(one op, several candidate ops, or none when pruned) followed by an optional
child node. Only the root may carry the branch BN with skip:
branch = BN(child(edge(x))) + edge(x).

The same dataclasses describe a search space (a branch lists its candidate
ops) and a derived cell (a branch lists the ops that survived, summed), so
`derive` only has to drop entries (STYLE.md 12).

Edges are named by their position, "e<i>.<j>...": the root's branches are
e0, e1, ..., and the branches of e0's child are e0.0, e0.1, ... The order of
`TreeCellSpec.edge_names` is preorder, so every edge comes after its parent,
as the prior's topological update needs (search/prior.py).

Two search spaces:

* `treecell_a` (reading A, PROXYLESS.md 3.3): TreeCell-A's fixed ops, one
  gate per edge (the edge gate merged with its single op), 15 per cell.
* `proxyless` (reading B): the ProxylessNAS CIFAR tree (pre-edge group conv
  C -> 2C, split root with two fixed Identity edges), 7 candidate ops on each
  of the 12 other edges, each with an edge gate `w_all` and one gate per op:
  96 gates per cell.

Every PyramidNet block has its own cell and gates (no sharing, BN L273).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from bayesnas_tf.errors import ConfigError, GenotypeError
from bayesnas_tf.spaces.tree.op_names import PRE_EDGE_WIDTH, check_tree_ops

ALLOCATIONS = ("copy", "split")
MERGES = ("add", "concat")
GATE_KINDS = ("single", "mixed")
START_PLANES = 16     # PyramidNet stem width (PROXYLESS.md 2).
BOTTLENECK = 4        # Block output = 4 x the bottleneck width C.
WIDTH_GROUPS = 2      # Widths are made divisible by the G = 2 group convs.


def split_sizes(channels: int, parts: int) -> List[int]:
  """PL get_split_list: floor(C/k) each, the first C mod k slices one wider."""
  sizes = [channels // parts] * parts
  for i in range(channels % parts):
    sizes[i] += 1
  return sizes


@dataclasses.dataclass(frozen=True)
class TreeBranchSpec:
  """An edge and the node below it.

  Attributes:
    ops: candidate ops (search space) or kept ops (derived cell, summed);
      empty when the branch was pruned.
    child: the node the edge leads to, or None for a leaf / pruned subtree.
  """
  ops: Tuple[str, ...]
  child: Optional["TreeNodeSpec"] = None


@dataclasses.dataclass(frozen=True)
class TreeNodeSpec:
  """Attributes:
    alloc: "copy" or "split" (how the input reaches the branches).
    merge: "add" or "concat".
    branches: the node's branches, in order.
    branch_bn: the root's BN + skip on each branch (root only).
  """
  alloc: str
  merge: str
  branches: Tuple[TreeBranchSpec, ...]
  branch_bn: bool = False


@dataclasses.dataclass(frozen=True)
class TreeCellSpec:
  """A tree cell: optional pre-edge, then the root node.

  Attributes:
    root: the root node.
    pre_edge: None, or a `ops.PRE_EDGES` name run before the root (it
      carries the block's stride and widens C to `PRE_EDGE_WIDTH` x C).
  """
  root: TreeNodeSpec
  pre_edge: Optional[str] = None

  def __post_init__(self):
    _validate_cell(self)

  # --- traversal ------------------------------------------------------------
  def walk(self) -> Iterator[Tuple[str, TreeBranchSpec, Optional[str], TreeNodeSpec]]:
    """Yields (edge name, branch, parent edge name or None, owning node), preorder."""
    def visit(node, prefix, parent):
      for i, branch in enumerate(node.branches):
        name = f"{prefix}{i}"
        yield name, branch, parent, node
        if branch.child is not None:
          yield from visit(branch.child, name + ".", name)
    yield from visit(self.root, "e", None)

  @property
  def edge_names(self) -> Tuple[str, ...]:
    return tuple(name for name, *_ in self.walk())

  def branch(self, edge_name: str) -> TreeBranchSpec:
    for name, branch, _, _ in self.walk():
      if name == edge_name:
        return branch
    raise KeyError(edge_name)

  @property
  def root_channels_multiple(self) -> int:
    return 1 if self.pre_edge is None else PRE_EDGE_WIDTH[self.pre_edge]

  # --- serialisation --------------------------------------------------------
  def to_dict(self) -> Dict[str, Any]:
    return {"pre_edge": self.pre_edge, "root": _node_to_dict(self.root)}

  @classmethod
  def from_dict(cls, value: Any, where: str = "tree cell") -> "TreeCellSpec":
    if isinstance(value, TreeCellSpec):
      return value
    if not isinstance(value, Mapping):
      raise GenotypeError(
          f"{where} must be an object with fields pre_edge and root; "
          f"received {value!r}")
    unknown = sorted(str(k) for k in value if k not in ("pre_edge", "root"))
    if unknown:
      raise GenotypeError(
          f"{where} has unknown field(s) {', '.join(unknown)}; valid fields "
          "are pre_edge, root")
    if "root" not in value:
      raise GenotypeError(f"{where} is missing its root node")
    return cls(root=_node_from_dict(value["root"], f"{where}, root"),
               pre_edge=value.get("pre_edge"))


def _node_to_dict(node: TreeNodeSpec) -> Dict[str, Any]:
  return {
      "alloc": node.alloc, "merge": node.merge, "branch_bn": node.branch_bn,
      "branches": [{"ops": list(b.ops),
                    "child": None if b.child is None else _node_to_dict(b.child)}
                   for b in node.branches]}


def _node_from_dict(value: Any, where: str) -> TreeNodeSpec:
  if not isinstance(value, Mapping):
    raise GenotypeError(f"{where} must be an object; received {value!r}")
  known = ("alloc", "merge", "branch_bn", "branches")
  unknown = sorted(str(k) for k in value if k not in known)
  missing = [k for k in ("alloc", "merge", "branches") if k not in value]
  if unknown or missing:
    raise GenotypeError(
        f"{where}: " + "; ".join(
            ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) +
            ([f"missing field(s) {', '.join(missing)}"] if missing else [])) +
        f" (a node has fields {', '.join(known)})")
  branches = value["branches"]
  if isinstance(branches, (str, bytes)) or not isinstance(branches, Sequence):
    raise GenotypeError(f"{where}: branches must be a list; received {branches!r}")
  parsed = []
  for i, branch in enumerate(branches):
    here = f"{where}, branch {i}"
    if not isinstance(branch, Mapping) or set(branch) - {"ops", "child"} or (
        "ops" not in branch):
      raise GenotypeError(
          f"{here} must be an object with fields ops and child; received "
          f"{branch!r}")
    ops = branch["ops"]
    if isinstance(ops, (str, bytes)) or not isinstance(ops, Sequence) or not all(
        isinstance(o, str) for o in ops):
      raise GenotypeError(f"{here}: ops must be a list of op names; received {ops!r}")
    child = branch.get("child")
    parsed.append(TreeBranchSpec(
        tuple(ops), None if child is None else _node_from_dict(child, f"{here}, child")))
  return TreeNodeSpec(value["alloc"], value["merge"], tuple(parsed),
                      bool(value.get("branch_bn", False)))


def _validate_cell(cell: TreeCellSpec) -> None:
  if cell.pre_edge is not None and cell.pre_edge not in PRE_EDGE_WIDTH:
    raise GenotypeError(
        f"unknown pre_edge {cell.pre_edge!r}; valid pre-edges are "
        f"{', '.join(PRE_EDGE_WIDTH)} or null")
  if not isinstance(cell.root, TreeNodeSpec):
    raise GenotypeError(f"a tree cell's root must be a node; received {cell.root!r}")

  def check(node: TreeNodeSpec, where: str, is_root: bool):
    if node.alloc not in ALLOCATIONS:
      raise GenotypeError(
          f"{where}: alloc {node.alloc!r} is invalid; use one of {', '.join(ALLOCATIONS)}")
    if node.merge not in MERGES:
      raise GenotypeError(
          f"{where}: merge {node.merge!r} is invalid; use one of {', '.join(MERGES)}")
    if node.alloc == "copy" and node.merge == "concat":
      # Every tree op keeps its channel count, so copy-then-concat would
      # multiply the width; PL's concat-copy needs channel-changing edges.
      raise GenotypeError(
          f"{where}: copy allocation with concat merge is not supported (tree "
          "ops keep their width); use split/concat, copy/add or split/add")
    if not node.branches:
      raise GenotypeError(f"{where} has no branches")
    if node.alloc == "split" and len(node.branches) < 2:
      raise GenotypeError(f"{where}: a split node needs at least 2 branches")
    if node.branch_bn and (not is_root or node.merge != "add"):
      raise GenotypeError(
          f"{where}: branch_bn (BN + skip per branch) exists only on the root "
          "node of an add merge")
    for i, branch in enumerate(node.branches):
      here = f"{where}, branch {i}"
      try:
        check_tree_ops(branch.ops)
      except ConfigError as error:
        raise GenotypeError(f"{here}: {error}") from None
      if len(set(branch.ops)) != len(branch.ops):
        raise GenotypeError(f"{here} lists an op twice: {list(branch.ops)}")
      if not branch.ops and branch.child is not None:
        raise GenotypeError(
            f"{here} has no op but a child node; a pruned edge prunes its subtree")
      if branch.child is not None:
        check(branch.child, f"{here}, child", False)

  check(cell.root, "root", True)


def node_channels(node: TreeNodeSpec, in_channels: int) -> Tuple[List[int], int]:
  """(channels of each branch, node output channels) for `in_channels` input.

  Raises ValueError when the node cannot be wired at this width (an add
  merge of split slices of different sizes).
  """
  k = len(node.branches)
  branch_channels = (split_sizes(in_channels, k) if node.alloc == "split"
                     else [in_channels] * k)
  if min(branch_channels) < 1:
    raise ValueError(
        f"a split node with {k} branches needs at least {k} input channels; "
        f"received {in_channels}")
  if node.merge == "add":
    if len(set(branch_channels)) != 1:
      raise ValueError(
          f"an add merge needs equal branches, but {in_channels} channels "
          f"split into {branch_channels}")
    return branch_channels, branch_channels[0]
  return branch_channels, sum(branch_channels)


def prune_cell(cell: TreeCellSpec) -> Optional[TreeCellSpec]:
  """Applies the derive rules of PROXYLESS.md 3.3 to a cell with pruned edges.

  Rule 1 (an op needs its parent edge) holds by construction: an edge without
  ops has no child. Rule 2: below the root, an edge whose child node lost
  every branch is removed. Rule 3: a root branch with BN + skip whose subtree
  is gone keeps its edge (the skip term). Rule 4: a cell with no root branch
  left is None (its block becomes the shortcut). The result is canonical:
  every edge with ops contributes, every node has a live branch.
  """
  def visit(node: TreeNodeSpec, is_root: bool) -> Optional[TreeNodeSpec]:
    branches = []
    for branch in node.branches:
      child = None
      if branch.ops and branch.child is not None:
        child = visit(branch.child, False)
        if child is None and not (is_root and node.branch_bn):
          branches.append(TreeBranchSpec(()))
          continue
      branches.append(TreeBranchSpec(branch.ops, child))
    if not any(b.ops for b in branches):
      return None
    return TreeNodeSpec(node.alloc, node.merge, tuple(branches), node.branch_bn)

  root = visit(cell.root, True)
  return None if root is None else TreeCellSpec(root, cell.pre_edge)


def with_edge_ops(cell: TreeCellSpec, edge_ops: Mapping[str, Sequence[str]]) -> TreeCellSpec:
  """A copy of `cell` whose listed edges hold `edge_ops[edge]` (maybe none).

  An edge left without ops loses its subtree (rule 1).
  """
  def visit(node: TreeNodeSpec, prefix: str) -> TreeNodeSpec:
    branches = []
    for i, branch in enumerate(node.branches):
      name = f"{prefix}{i}"
      ops = tuple(edge_ops.get(name, branch.ops))
      child = (visit(branch.child, name + ".")
               if ops and branch.child is not None else None)
      branches.append(TreeBranchSpec(ops, child))
    return TreeNodeSpec(node.alloc, node.merge, tuple(branches), node.branch_bn)

  return TreeCellSpec(visit(cell.root, "e"), cell.pre_edge)


@dataclasses.dataclass(frozen=True)
class TreeSearchSpace:
  """A tree cell template with gates, shared (as data) by every block.

  It also answers the search loop's `space.cell(cell_type)` questions (the
  gated edges, their names and predecessors), so one object serves every
  block's cell type.

  Attributes:
    name: the space name (`--search_space`).
    template: the cell template; a gated branch lists its candidate ops.
    gate_kind: "single" (one gate per edge: its op and its edge gate merged)
      or "mixed" (one gate per candidate op, then the edge gate `w_all`).
    fixed_edges: ungated edges (always kept); their single op is fixed.
  """
  name: str
  template: TreeCellSpec
  gate_kind: str
  fixed_edges: Tuple[str, ...] = ()

  def __post_init__(self):
    if self.gate_kind not in GATE_KINDS:
      raise ValueError(f"gate_kind must be one of {GATE_KINDS}; got {self.gate_kind!r}")
    names = self.template.edge_names
    for edge in self.fixed_edges:
      if edge not in names:
        raise ValueError(f"fixed edge {edge!r} is not an edge of the cell")
      if len(self.template.branch(edge).ops) != 1:
        raise ValueError(f"fixed edge {edge!r} must have exactly one op")
    counts = {len(self.template.branch(e).ops) for e in self.edges}
    if self.gate_kind == "single" and counts != {1}:
      raise ValueError("a single-gate space needs exactly one op per gated edge")
    if self.gate_kind == "mixed" and len(counts) != 1:
      raise ValueError("a mixed-gate space needs the same candidates count on every gated edge")

  @property
  def edges(self) -> Tuple[str, ...]:
    """The gated edges in preorder (the rows of the prior's (E, G) arrays)."""
    return tuple(e for e in self.template.edge_names if e not in self.fixed_edges)

  @property
  def edge_names(self) -> Tuple[str, ...]:
    return self.edges

  @property
  def candidates(self) -> Tuple[str, ...]:
    return self.template.branch(self.edges[0]).ops

  @property
  def num_gates(self) -> int:
    """G, the gate columns per edge."""
    return 1 if self.gate_kind == "single" else len(self.candidates) + 1

  @property
  def gate_names(self) -> Tuple[str, ...]:
    if self.gate_kind == "single":
      return ("path",)
    return self.candidates + ("all",)

  def predecessor_edges(self, edge_index: int) -> Tuple[int, ...]:
    """The gated parent edge of a gated edge (eq. 6 / 8), or () at the top.

    A fixed (ungated, always kept) parent adds no term, like an edge that
    leaves a cell input (ALGORITHM.md 3.5).
    """
    parents = {name: parent for name, _, parent, _ in self.template.walk()}
    parent = parents[self.edges[edge_index]]
    if parent is None or parent in self.fixed_edges:
      return ()
    return (self.edges.index(parent),)

  def cell(self, cell_type: str) -> "TreeSearchSpace":
    """Every block's cell has this layout (its gates are its own)."""
    del cell_type
    return self


def _leaf(*ops: str) -> TreeBranchSpec:
  return TreeBranchSpec(tuple(ops))


def _branch(op: str, *children: TreeBranchSpec, alloc: str = "copy",
            merge: str = "add") -> TreeBranchSpec:
  return TreeBranchSpec((op,), TreeNodeSpec(alloc, merge, tuple(children)))


# TreeCell-A (PROXYLESS.md 1.2; PL ImageNet/tree_cells.py, TA JSON): 15 edges,
# 9 root-to-leaf paths, identical in every block.
TREECELL_A = TreeCellSpec(root=TreeNodeSpec("copy", "add", branch_bn=True, branches=(
    _branch("gconv3",                                              # e0 -> b1
            _branch("conv1x1", _leaf("avg3"), _leaf("sep7"),       # b1_b1
                    alloc="split", merge="concat"),
            _branch("max3", _leaf("sep3"), _leaf("sep5"))),        # b1_b2
    _branch("gconv3",                                              # e1 -> b2
            _branch("sep5", _leaf("sep5"), _leaf("avg3"), _leaf("avg3")),  # b2_b1
            _branch("sep3", _leaf("avg3"), _leaf("sep3"))),        # b2_b2
)))

# The ProxylessNAS CIFAR candidates, all seen at both levels (PROXYLESS.md 1.3).
PROXYLESS_CANDIDATES = ("identity", "sep3", "sep5", "sep7", "dil_sep3", "avg3",
                        "max3")


def proxyless_cell(choices: Sequence[Sequence[str]] | None = None) -> TreeCellSpec:
  """The ProxylessNAS tree; `choices` gives the 12 searchable edges' ops.

  Edges in preorder: e0.0, e0.0.0, e0.0.1, e0.1, e0.1.0, e0.1.1, e1.0, ...
  (N1's first edge, its two leaves, N1's second edge, its two leaves, then
  the same under N2). Without `choices` every edge holds all 7 candidates.
  """
  picks = [PROXYLESS_CANDIDATES] * 12 if choices is None else [tuple(c) for c in choices]
  if len(picks) != 12:
    raise ValueError(f"the ProxylessNAS tree has 12 searchable edges; got {len(picks)}")
  it = iter(picks)

  def level3():
    return TreeBranchSpec(next(it))

  def level2():
    ops = next(it)
    return TreeBranchSpec(ops, TreeNodeSpec("copy", "add", (level3(), level3())))

  def subtree():
    return TreeNodeSpec("copy", "add", (level2(), level2()))

  root = TreeNodeSpec("split", "add", branch_bn=True, branches=(
      TreeBranchSpec(("identity",), subtree()),
      TreeBranchSpec(("identity",), subtree())))
  return TreeCellSpec(root=root, pre_edge="gconv3_x2")


TREE_SPACES: Dict[str, TreeSearchSpace] = {
    "treecell_a": TreeSearchSpace("treecell_a", TREECELL_A, "single"),
    "proxyless": TreeSearchSpace("proxyless", proxyless_cell(), "mixed",
                                 fixed_edges=("e0", "e1")),
}


def get_tree_space(name: str) -> TreeSearchSpace:
  try:
    return TREE_SPACES[name]
  except KeyError:
    raise ConfigError(
        f"unknown tree search space {name!r}; valid tree spaces are "
        f"{', '.join(TREE_SPACES)}") from None


# The gate Hessian estimators a tree supernet supports: those that only
# differentiate the network's gate offsets (search/hessian.py); the shadow
# network of diag_backprop covers the DAG supernet's layers only
# (spaces/dag/diag_backprop.py).
TREE_HESSIAN_METHODS = ("ggn", "ggn_mc", "exact")


def pyramid_widths(blocks_per_stage: int, alpha: float,
                   start_planes: int = START_PLANES) -> Tuple[int, ...]:
  """Bottleneck widths C_i of the 3B blocks (PL pyramidnet.py L215-237).

  planes grows by alpha / (3B) per block (accumulated in floating point as PL
  does); C_i = int(round(planes)) (Python's round), minus its remainder mod
  2 so the G = 2 group convs divide it. Raises ConfigError when a width is
  below 2.
  """
  if isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int) or (
      blocks_per_stage < 1):
    raise ConfigError(
        f"--depth_blocks must be a positive integer (blocks per stage; the "
        f"paper's PyramidNet has 18); received depth_blocks={blocks_per_stage!r}")
  if isinstance(start_planes, bool) or not isinstance(start_planes, int) or start_planes < 1:
    raise ConfigError(
        f"--start_planes must be a positive integer (the paper's stem has 16); "
        f"received start_planes={start_planes!r}")
  add_rate = alpha / (3 * blocks_per_stage)
  planes = float(start_planes)
  widths = []
  for index in range(3 * blocks_per_stage):
    planes += add_rate
    width = int(round(planes))
    width -= width % WIDTH_GROUPS
    if width < WIDTH_GROUPS:
      raise ConfigError(
          f"--alpha={alpha:g} with --depth_blocks={blocks_per_stage} and "
          f"--start_planes={start_planes} gives block {index + 1} the width "
          f"{width} (round({planes:.3f}) made even for the G=2 group convs); "
          f"every width must be an even number >= 2, so raise --alpha or "
          f"--start_planes")
    widths.append(width)
  return tuple(widths)


def block_strides(blocks_per_stage: int) -> Tuple[int, ...]:
  """Stride 2 at the first block of stages 2 and 3 (PL pyramidnet.py L215-219)."""
  return tuple(2 if i in (blocks_per_stage, 2 * blocks_per_stage) else 1
               for i in range(3 * blocks_per_stage))


def block_name(index: int) -> str:
  """The cell type of block `index` (0-based): block_01 ... block_54."""
  return f"block_{index + 1:02d}"
