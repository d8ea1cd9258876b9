"""Derived PyramidNet tree networks ("pyramid_tree" genotypes) as JSON data.

A proxyless search (PROXYLESS.md 3) derives one tree per PyramidNet block,
so its genotype is the whole network: the backbone that fixes every block's
width, and one `TreeCellSpec` per block (null when the whole cell was pruned
and the block is its shortcut only, PROXYLESS.md 3.3 rule 4).

JSON schema, version 1::

  {"schema_version": 1, "kind": "pyramid_tree",
   "backbone": {"blocks_per_stage": 18, "alpha": 84.0, "start_planes": 16},
   "space": "treecell_a" | "proxyless" | null,
   "cells": [{"pre_edge": null | "gconv3_x2",
              "root": {"alloc": "copy", "merge": "add", "branch_bn": true,
                       "branches": [{"ops": ["gconv3"], "child": {...}}, ...]}}
             | null, ... one per block, 3B in all],
   "search": {...} | null}

A branch with an empty op list is pruned (a split/concat node then fills
that channel slice with zeros; an add node ignores it). `genotype.Genotype`
(the DAG cells of the proxy search) dispatches on "kind", so
`Genotype.load`/`resolve_genotype` read both kinds. `search` is provenance
only and takes no part in equality.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from bayesnas_tf.errors import ConfigError, GenotypeError
from bayesnas_tf.io_utils import atomic_write_text, json_provenance
from bayesnas_tf.spaces import base
from bayesnas_tf.spaces.tree.space import START_PLANES, TREE_SPACES, TREECELL_A
from bayesnas_tf.spaces.tree.space import TreeCellSpec, TreeNodeSpec, block_strides
from bayesnas_tf.spaces.tree.space import node_channels, proxyless_cell, prune_cell
from bayesnas_tf.spaces.tree.space import pyramid_widths

KIND = "pyramid_tree"
_FIELDS = ("schema_version", "kind", "backbone", "cells", "space", "search")


@dataclasses.dataclass(frozen=True)
class PyramidBackbone:
  """The bottleneck PyramidNet around the cells (PROXYLESS.md 2).

  Attributes:
    blocks_per_stage: B (3 stages of B blocks; the paper's B = 18).
    alpha: the total widening alpha (84 or 150 in PL's released nets).
    start_planes: the stem width (16).
  """
  blocks_per_stage: int
  alpha: float
  start_planes: int = START_PLANES

  def __post_init__(self):
    object.__setattr__(self, "alpha", float(self.alpha))
    try:
      pyramid_widths(self.blocks_per_stage, self.alpha, self.start_planes)
    except ConfigError as e:
      raise GenotypeError(f"genotype backbone is invalid: {e}") from None

  @property
  def num_blocks(self) -> int:
    return 3 * self.blocks_per_stage

  @property
  def widths(self) -> Tuple[int, ...]:
    return pyramid_widths(self.blocks_per_stage, self.alpha, self.start_planes)

  @property
  def strides(self) -> Tuple[int, ...]:
    return block_strides(self.blocks_per_stage)

  def to_dict(self) -> Dict[str, Any]:
    return {"blocks_per_stage": self.blocks_per_stage, "alpha": self.alpha,
            "start_planes": self.start_planes}

  @classmethod
  def from_dict(cls, value: Any) -> "PyramidBackbone":
    fields = ("blocks_per_stage", "alpha", "start_planes")
    if not isinstance(value, Mapping) or set(value) - set(fields) or not {
        "blocks_per_stage", "alpha"} <= set(value):
      raise GenotypeError(
          f"genotype backbone must be an object with blocks_per_stage, alpha "
          f"and optionally start_planes; received {value!r}")
    return cls(value["blocks_per_stage"], value["alpha"],
               value.get("start_planes", START_PLANES))


def _check_cell_widths(cell: TreeCellSpec, channels: int, where: str) -> None:
  """The tree must map C channels back to C (raises GenotypeError)."""
  def visit(node: TreeNodeSpec, width: int) -> int:
    branch_widths, out = node_channels(node, width)
    for branch, w in zip(node.branches, branch_widths):
      if branch.child is not None and visit(branch.child, w) != w:
        raise ValueError("a child node changes its input width")
    return out

  try:
    out = visit(cell.root, channels * cell.root_channels_multiple)
  except ValueError as e:
    raise GenotypeError(f"{where} cannot be built at width {channels}: {e}") from None
  if out != channels:
    raise GenotypeError(
        f"{where} maps {channels} channels to {out}; a cell must keep its width")


@dataclasses.dataclass(frozen=True)
class TreeGenotype:
  """A PyramidNet whose blocks hold (derived) tree cells.

  Attributes:
    backbone: the `PyramidBackbone` (widths, strides).
    cells: one `TreeCellSpec` per block, or None for a block whose whole cell
      was pruned (it is then its shortcut path only); stored pruned by
      `space.prune_cell`.
    space: the search space the cells came from, if any.
    search: provenance (lambda, seed, ...); not part of equality.
  """
  backbone: PyramidBackbone
  cells: Tuple[Optional[TreeCellSpec], ...]
  space: Optional[str] = None
  search: Optional[Mapping[str, Any]] = dataclasses.field(default=None, compare=False)

  SCHEMA_VERSION: ClassVar[int] = 1
  kind: ClassVar[str] = KIND
  family: ClassVar[str] = "tree"  # The search-space family (spaces/registry.py).

  def __post_init__(self):
    if not isinstance(self.backbone, PyramidBackbone):
      raise GenotypeError(f"genotype backbone must be a PyramidBackbone; "
                          f"received {self.backbone!r}")
    # Cells are kept in the canonical form of the derive rules (a subtree
    # that computes nothing is dropped, a cell with nothing left is None), so
    # equal networks compare equal and no layer is built for a dead branch.
    cells = tuple(None if c is None else prune_cell(
        TreeCellSpec.from_dict(c, f"block {i + 1} cell")) for i, c in enumerate(self.cells))
    if len(cells) != self.backbone.num_blocks:
      raise GenotypeError(
          f"a pyramid_tree genotype needs one cell (or null) per block: "
          f"blocks_per_stage={self.backbone.blocks_per_stage} gives "
          f"{self.backbone.num_blocks} blocks, but {len(cells)} cells are listed")
    for i, (cell, width) in enumerate(zip(cells, self.backbone.widths)):
      if cell is not None:
        _check_cell_widths(cell, width, f"block {i + 1} cell")
    if self.space is not None and self.space not in TREE_SPACES:
      raise GenotypeError(
          f"genotype space {self.space!r} is not a tree search space "
          f"({', '.join(TREE_SPACES)}) or null")
    object.__setattr__(self, "cells", cells)
    object.__setattr__(self, "search", json_provenance(self.search))

  # --- summaries --------------------------------------------------------------
  def kept_edges(self) -> List[int]:
    """Edges holding at least one op, per block (0 for a removed cell)."""
    return [0 if c is None else sum(1 for _, b, _, _ in c.walk() if b.ops)
            for c in self.cells]

  def removed_blocks(self) -> List[int]:
    """1-based indices of the blocks that are shortcut only."""
    return [i + 1 for i, c in enumerate(self.cells) if c is None]

  # --- serialisation ----------------------------------------------------------
  def to_dict(self) -> Dict[str, Any]:
    return {"schema_version": self.SCHEMA_VERSION, "kind": KIND,
            "backbone": self.backbone.to_dict(), "space": self.space,
            "cells": [None if c is None else c.to_dict() for c in self.cells],
            "search": None if self.search is None else json.loads(json.dumps(self.search))}

  @classmethod
  def from_dict(cls, d: Any) -> "TreeGenotype":
    if not isinstance(d, Mapping):
      raise GenotypeError(f"a genotype must be a JSON object; received {type(d).__name__}")
    unknown = [str(k) for k in d if k not in _FIELDS]
    if unknown:
      raise GenotypeError(
          f"unknown pyramid_tree genotype field(s) {', '.join(map(repr, unknown))}; "
          f"valid fields are {', '.join(_FIELDS)}")
    missing = [k for k in ("schema_version", "kind", "backbone", "cells") if k not in d]
    if missing:
      raise GenotypeError(f"pyramid_tree genotype is missing field(s) {', '.join(missing)}")
    if d["kind"] != KIND:
      raise GenotypeError(f"genotype kind {d['kind']!r} is not {KIND!r}")
    base.check_schema_version(d["schema_version"], cls.SCHEMA_VERSION, KIND)
    cells = d["cells"]
    if isinstance(cells, (str, bytes)) or not isinstance(cells, Sequence):
      raise GenotypeError(f"genotype cells must be a list; received {cells!r}")
    return cls(PyramidBackbone.from_dict(d["backbone"]), tuple(cells),
               d.get("space"), d.get("search"))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True, indent=2)

  @classmethod
  def from_json(cls, text: str) -> "TreeGenotype":
    try:
      return cls.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
      raise GenotypeError(f"genotype JSON is not valid JSON ({e.msg})") from None

  def save(self, path: str | os.PathLike) -> None:
    atomic_write_text(path, self.to_json())


def trainable_params(genotype: TreeGenotype, num_classes: int = 10) -> int:
  """Trainable parameters of the network, from the formulas of PROXYLESS.md 2.

  Stem 464 (for 3 input channels); per block in_bottle 2Cin + Cin C,
  out_bottle 4C^2 + 2C, final BN 8C plus its cell; head 2F + (F + 1) K.
  """
  backbone = genotype.backbone
  start = backbone.start_planes
  total = 27 * start + 2 * start
  in_channels = start
  for cell, c in zip(genotype.cells, backbone.widths):
    if cell is None:
      continue
    total += 2 * in_channels + in_channels * c + 4 * c * c + 2 * c + 8 * c
    total += cell_params(cell, c)
    in_channels = 4 * c
  return total + 2 * in_channels + (in_channels + 1) * num_classes


def cell_params(cell: TreeCellSpec, channels: int) -> int:
  """Trainable parameters of one tree cell at width C (PROXYLESS.md 1.4)."""
  # Imported here: genotypes are read and checked before TensorFlow loads.
  from bayesnas_tf.spaces.tree import ops as tree_ops  # pylint: disable=g-import-not-at-top
  total = 0 if cell.pre_edge is None else tree_ops.op_params(cell.pre_edge, channels)

  def visit(node: TreeNodeSpec, width: int, is_root: bool) -> int:
    result = 0
    branch_widths, _ = node_channels(node, width)
    for branch, w in zip(node.branches, branch_widths):
      result += sum(tree_ops.op_params(op, w) for op in branch.ops)
      if branch.child is not None:
        result += visit(branch.child, w, False)
        if is_root and node.branch_bn:
          result += 2 * w
    return result

  return total + visit(cell.root, channels * cell.root_channels_multiple, True)


# --- built-in networks (PROXYLESS.md 2 table) ------------------------------------
# The released Proxyless-G CIFAR net (han-cai/files proxylessnas/
# proxyless_cifar.config): the ops of the 12 searchable edges of each of its
# 54 blocks, in `proxyless_cell` order (N1's edge, its two leaves, N1's other
# edge, its two leaves, then N2 likewise). Read off the released JSON; with
# the B = 18, alpha = 84 backbone it has 5,731,530 trainable parameters.
_PROXYLESS_G_OPS = """
sep7 dil_sep3 identity max3 sep7 max3 sep5 sep5 sep5 dil_sep3 sep7 sep7
avg3 avg3 avg3 identity sep3 identity max3 dil_sep3 identity sep7 dil_sep3 dil_sep3
sep7 sep3 avg3 identity sep5 avg3 sep3 sep3 avg3 dil_sep3 dil_sep3 sep5
avg3 sep5 dil_sep3 sep5 sep3 dil_sep3 dil_sep3 sep7 sep3 sep7 identity sep7
avg3 sep5 dil_sep3 identity dil_sep3 sep5 sep7 sep7 avg3 max3 identity max3
sep7 sep7 max3 max3 sep3 sep5 avg3 dil_sep3 sep3 sep7 identity identity
dil_sep3 identity max3 max3 sep7 sep7 sep7 sep5 sep3 sep7 identity identity
dil_sep3 sep5 sep7 dil_sep3 sep5 sep7 max3 avg3 avg3 sep5 sep3 sep7
sep7 sep5 max3 dil_sep3 identity identity max3 sep3 avg3 max3 avg3 dil_sep3
sep5 sep3 identity identity sep3 sep7 sep3 sep5 sep7 identity sep5 sep7
sep7 sep7 sep5 avg3 sep3 sep5 dil_sep3 avg3 dil_sep3 identity dil_sep3 sep3
sep5 avg3 sep5 dil_sep3 sep3 sep3 avg3 sep7 sep7 sep5 dil_sep3 sep3
max3 sep7 sep3 max3 sep7 dil_sep3 sep3 avg3 sep5 max3 sep7 identity
sep3 max3 dil_sep3 sep7 sep7 dil_sep3 sep5 identity sep3 dil_sep3 sep7 sep3
dil_sep3 max3 sep3 avg3 dil_sep3 dil_sep3 avg3 sep5 identity identity sep5 identity
sep5 dil_sep3 sep5 identity avg3 avg3 dil_sep3 sep5 sep5 sep5 sep7 sep3
sep7 sep5 sep5 sep5 dil_sep3 sep3 identity max3 sep7 dil_sep3 sep3 sep7
max3 identity identity dil_sep3 sep3 identity sep7 sep5 sep7 max3 identity dil_sep3
dil_sep3 sep5 avg3 max3 avg3 sep7 sep5 sep7 sep3 avg3 avg3 max3
sep7 identity sep7 dil_sep3 identity sep7 dil_sep3 sep3 sep7 max3 max3 sep5
max3 avg3 sep3 dil_sep3 identity dil_sep3 max3 max3 sep5 max3 identity avg3
dil_sep3 sep7 sep3 avg3 avg3 sep3 sep3 sep7 identity avg3 dil_sep3 dil_sep3
dil_sep3 max3 avg3 max3 sep7 identity sep7 dil_sep3 identity dil_sep3 avg3 max3
sep7 max3 sep7 sep5 max3 identity max3 avg3 dil_sep3 identity max3 sep7
identity avg3 sep5 sep5 max3 sep5 dil_sep3 sep7 avg3 dil_sep3 dil_sep3 max3
sep3 avg3 dil_sep3 identity dil_sep3 dil_sep3 dil_sep3 avg3 avg3 sep3 avg3 sep3
dil_sep3 max3 sep7 sep7 identity max3 max3 sep5 sep5 max3 sep5 dil_sep3
sep3 sep7 sep3 sep7 avg3 identity max3 sep3 sep7 sep7 max3 max3
sep7 sep7 sep7 sep5 avg3 sep3 sep3 identity dil_sep3 sep3 avg3 sep3
sep5 avg3 identity identity avg3 sep5 avg3 sep3 avg3 sep7 avg3 max3
identity avg3 dil_sep3 sep3 identity sep7 identity sep7 max3 avg3 identity dil_sep3
sep7 sep5 identity max3 sep7 dil_sep3 max3 dil_sep3 max3 sep7 sep7 sep7
sep3 max3 sep3 sep7 identity sep3 sep5 identity sep3 sep3 sep5 identity
dil_sep3 dil_sep3 sep3 sep7 dil_sep3 sep7 sep3 sep3 dil_sep3 identity max3 identity
max3 identity sep5 identity sep5 avg3 sep3 avg3 identity sep7 avg3 dil_sep3
sep7 sep7 sep5 max3 dil_sep3 avg3 sep7 sep7 sep5 sep3 sep5 sep5
avg3 avg3 avg3 avg3 dil_sep3 avg3 sep7 sep5 identity identity identity avg3
max3 identity avg3 sep7 sep5 identity identity avg3 identity identity sep7 identity
dil_sep3 sep7 max3 sep3 identity sep5 avg3 sep3 identity identity max3 avg3
sep7 avg3 sep5 sep7 avg3 sep3 max3 avg3 sep3 identity max3 max3
identity avg3 sep7 identity identity sep7 identity avg3 sep5 max3 avg3 sep7
dil_sep3 sep5 identity identity max3 sep5 sep7 dil_sep3 sep7 sep5 identity dil_sep3
max3 identity avg3 max3 avg3 max3 dil_sep3 identity sep5 avg3 sep3 identity
sep7 sep5 sep7 sep7 sep7 avg3 dil_sep3 sep3 max3 sep7 sep7 avg3
dil_sep3 dil_sep3 max3 avg3 dil_sep3 sep3 sep7 identity dil_sep3 dil_sep3 max3 sep5
avg3 avg3 max3 dil_sep3 sep3 max3 dil_sep3 sep7 dil_sep3 identity avg3 identity
max3 avg3 sep7 max3 sep3 sep3 sep5 avg3 identity dil_sep3 identity sep3
sep5 sep7 dil_sep3 dil_sep3 identity max3 max3 sep3 sep5 sep7 max3 identity
sep7 sep3 max3 sep7 dil_sep3 avg3 max3 max3 max3 sep5 sep5 max3
max3 identity avg3 sep5 dil_sep3 sep3 sep5 sep7 sep3 sep3 sep7 sep7
identity avg3 sep5 sep3 sep7 sep7 identity sep7 sep7 sep7 sep3 avg3
sep5 sep5 sep3 max3 avg3 identity sep5 avg3 max3 sep5 sep5 identity
sep3 dil_sep3 sep3 max3 max3 avg3 identity max3 dil_sep3 sep7 sep3 sep3
sep7 sep3 max3 sep7 sep5 identity sep5 max3 sep3 max3 sep3 sep7
"""


def _proxyless_g() -> TreeGenotype:
  rows = [line.split() for line in _PROXYLESS_G_OPS.strip().splitlines()]
  cells = tuple(proxyless_cell([(op,) for op in row]) for row in rows)
  return TreeGenotype(PyramidBackbone(18, 84), cells, "proxyless",
                      {"source": "han-cai/files proxylessnas/proxyless_cifar.config",
                       "dataset": "cifar10"})


def _treecell_a(alpha: float) -> TreeGenotype:
  backbone = PyramidBackbone(18, alpha)
  return TreeGenotype(backbone, (TREECELL_A,) * backbone.num_blocks, "treecell_a",
                      {"source": f"PathLevel-EAS TreeCell-A, B=18, alpha={alpha:g}",
                       "dataset": "cifar10"})


# Built-in networks; trainable parameters with 10 classes in the comments.
BUILTIN_TREE_GENOTYPES: Dict[str, TreeGenotype] = {
    "treecell_a_b18_a84": _treecell_a(84),     # 5,736,930 (PL README: 5.7M)
    "treecell_a_b18_a150": _treecell_a(150),   # 14,293,302 (PL README: 14.3M)
    "proxyless_g_cifar": _proxyless_g(),       # 5,731,530 (BayesNAS Table 1: 5.7M)
}
