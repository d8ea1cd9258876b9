"""Derived architectures ("genotypes") as validated, JSON-serialisable data.

A genotype lists, for every intermediate node `n0..n{K-1}` of the normal and
the reduction cell, the `(op, input)` pairs whose outputs are summed into that
node (ALGORITHM.md 3.6: BayesNAS keeps every surviving op, there is no top-k,
so a node can have any number of inputs, including none). Inputs are `in0`
(cell k-1), `in1` (cell k-2) or an earlier node. The cell output is the
concatenation of all nodes.

JSON schema, version 1 (what `Genotype.save` writes as `genotype.json`)::

  {"schema_version": 1,
   "normal": {"n0": [["sep5", "in0"], ["max", "in1"]], "n1": [...], ...},
   "reduce": {...},
   "size_reduct": "conv",
   "search": {...} or null}

`search` is provenance only (lambda, seed, Hessian method, dataset...); it is
not part of the architecture and does not take part in equality.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.io_utils import atomic_write_text, json_provenance, parse_json
from bayesnas_tf.spaces import base
from bayesnas_tf.spaces.dag import op_names

OpInput = Tuple[str, str]  # (op name, input name)
CellGenotype = Tuple[Tuple[OpInput, ...], ...]  # one tuple per node

CELL_TYPES = ("normal", "reduce")
CELL_INPUTS = ("in0", "in1")
# ALGORITHM.md 5.1: the CReduct that halves a prev-prev input is a single
# stride-2 1x1 conv ("conv", released 0.01 / 0.007 / ImageNet cells) or a
# factorized reduce ("factorized", released 0.005 cells).
SIZE_REDUCTS = ("conv", "factorized")

_REQUIRED_FIELDS = ("schema_version", "normal", "reduce")
_OPTIONAL_FIELDS = ("size_reduct", "search")


def _node_name(index: int) -> str:
  return f"n{index}"


def _valid_inputs(node_index: int) -> Tuple[str, ...]:
  return CELL_INPUTS + tuple(_node_name(i) for i in range(node_index))


def _validate_cell(cell_type: str, nodes: Any) -> CellGenotype:
  """Checks one cell given as a sequence of nodes; returns it as tuples."""
  if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
    raise GenotypeError(
        f"genotype {cell_type} cell must be a list of nodes, one list of "
        f"(op, input) pairs per node; received {nodes!r}")
  if not nodes:
    raise GenotypeError(
        f"genotype {cell_type} cell has no nodes; give at least node n0")
  valid_ops = ", ".join(op_names.PRIMITIVES)
  cell = []
  for j, entries in enumerate(nodes):
    node = _node_name(j)
    where = f"genotype {cell_type} cell, node {node}"
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
      raise GenotypeError(
          f"{where} must be a list of [op, input] pairs; received {entries!r}")
    node_ops = []
    for k, entry in enumerate(entries):
      if (isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence)
          or len(entry) != 2
          or not all(isinstance(part, str) for part in entry)):
        raise GenotypeError(
            f"{where}, entry {k} must be a 2-element [op, input] list of "
            f"strings; received {entry!r}")
      op, src = entry
      if op not in op_names.PRIMITIVES:
        raise GenotypeError(
            f"{where}, entry {k}: unknown op {op!r}; valid ops are {valid_ops}")
      inputs = _valid_inputs(j)
      if src not in inputs:
        raise GenotypeError(
            f"{where}, entry {k}: invalid input {src!r}; a node reads in0, "
            f"in1 or an earlier node ({', '.join(inputs)})")
      if (op, src) in node_ops:
        # Two copies of one op on one edge would be two layers with the same
        # name in a child cell; it is almost surely a typo.
        raise GenotypeError(
            f"{where} lists [{op!r}, {src!r}] twice; list each (op, input) "
            f"pair once")
      node_ops.append((op, src))
    cell.append(tuple(node_ops))
  return tuple(cell)


def _cell_from_mapping(cell_type: str, value: Any) -> List[Any]:
  """Turns the JSON form {"n0": [...], ...} into a list of nodes."""
  if not isinstance(value, Mapping):
    raise GenotypeError(
        f"genotype field {cell_type!r} must be an object mapping node names "
        f"n0..n{{K-1}} to lists of [op, input] pairs; received {value!r}")
  if not value:
    raise GenotypeError(
        f"genotype {cell_type} cell has no nodes; give at least node n0")
  expected = [_node_name(i) for i in range(len(value))]
  unexpected = sorted(str(k) for k in value if k not in expected)
  if unexpected:
    raise GenotypeError(
        f"genotype {cell_type} cell has unexpected node key(s) "
        f"{', '.join(repr(k) for k in unexpected)}; node keys must be exactly "
        f"{', '.join(expected)}")
  return [value[name] for name in expected]


@dataclasses.dataclass(frozen=True)
class Genotype:
  """The cells of a derived network.

  Attributes:
    normal: one tuple per intermediate node n0..n{K-1}; each holds the
      `(op, input)` pairs summed into that node.
    reduce: the same for the reduction cell (ops that read in0/in1 have
      stride 2).
    size_reduct: how the CReduct that halves a prev-prev input is built,
      "conv" or "factorized" (ALGORITHM.md 5.1).
    search: provenance of the search that produced it (JSON-able); excluded
      from equality and hashing.
  """

  normal: CellGenotype
  reduce: CellGenotype
  size_reduct: str = "conv"
  search: Optional[Mapping[str, Any]] = dataclasses.field(
      default=None, compare=False)

  SCHEMA_VERSION: ClassVar[int] = 1
  # The search-space family (spaces/registry.py) and the kind of its JSON
  # (which carries no "kind" field).
  family: ClassVar[str] = "dag"
  kind: ClassVar[str] = "cells"

  def __post_init__(self):
    # Validating here (not only in from_dict) means no invalid Genotype can
    # exist, whichever way it was made.
    normal = _validate_cell("normal", self.normal)
    reduce = _validate_cell("reduce", self.reduce)
    if len(normal) != len(reduce):
      raise GenotypeError(
          f"the normal cell has {len(normal)} nodes but the reduce cell has "
          f"{len(reduce)}; both cells need the same number of nodes")
    if self.size_reduct not in SIZE_REDUCTS:
      raise GenotypeError(
          f"genotype size_reduct {self.size_reduct!r} is invalid; use one of "
          f"{', '.join(SIZE_REDUCTS)}")
    object.__setattr__(self, "normal", normal)
    object.__setattr__(self, "reduce", reduce)
    object.__setattr__(self, "search", json_provenance(self.search))

  # --- accessors ------------------------------------------------------------
  def cell(self, cell_type: str) -> CellGenotype:
    """The nodes of the "normal" or "reduce" cell."""
    if cell_type not in CELL_TYPES:
      raise ValueError(
          f"cell_type must be one of {CELL_TYPES}; received {cell_type!r}")
    return self.normal if cell_type == "normal" else self.reduce

  @property
  def num_nodes(self) -> int:
    """Intermediate nodes per cell (the same in both cells, validated)."""
    return len(self.normal)

  def degenerate_nodes(self, cell_type: str) -> List[str]:
    """Nodes with no incoming op; a child network feeds zeros there (3.6)."""
    return [_node_name(j) for j, node in enumerate(self.cell(cell_type))
            if not node]

  # --- serialisation --------------------------------------------------------
  def to_dict(self) -> Dict[str, Any]:
    """The schema-version-1 JSON object (plain dicts and lists)."""
    result: Dict[str, Any] = {"schema_version": self.SCHEMA_VERSION}
    for cell_type in CELL_TYPES:
      result[cell_type] = {
          _node_name(j): [[op, src] for op, src in node]
          for j, node in enumerate(self.cell(cell_type))}
    result["size_reduct"] = self.size_reduct
    result["search"] = (None if self.search is None
                        else json.loads(json.dumps(self.search)))
    return result

  @classmethod
  def from_dict(cls, d: Any) -> "Genotype":
    """Parses and validates the JSON object written by `to_dict`.

    A JSON object with another family's "kind" (e.g. "pyramid_tree", a
    proxyless-search network) is returned as that family's genotype, so
    `Genotype.load` reads every genotype.json.
    """
    if isinstance(d, Mapping) and d.get("kind", cls.kind) != cls.kind:
      from bayesnas_tf.spaces import registry  # pylint: disable=g-import-not-at-top
      return registry.genotype_from_dict(d)
    if not isinstance(d, Mapping):
      raise GenotypeError(
          f"a genotype must be a JSON object with fields "
          f"{', '.join(_REQUIRED_FIELDS)}; received {type(d).__name__}")
    known = _REQUIRED_FIELDS + _OPTIONAL_FIELDS
    unknown = [str(k) for k in d if k not in known]
    if unknown:
      raise GenotypeError(
          f"unknown genotype field(s) {', '.join(repr(k) for k in unknown)}; "
          f"valid fields are {', '.join(known)}")
    missing = [k for k in _REQUIRED_FIELDS if k not in d]
    if missing:
      raise GenotypeError(
          f"genotype is missing required field(s) {', '.join(missing)}")
    base.check_schema_version(d["schema_version"], cls.SCHEMA_VERSION)
    normal = _cell_from_mapping("normal", d["normal"])
    reduce = _cell_from_mapping("reduce", d["reduce"])
    return cls(normal=normal, reduce=reduce,
               size_reduct=d.get("size_reduct", "conv"),
               search=d.get("search"))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True, indent=2)

  @classmethod
  def from_json(cls, text: str) -> "Genotype":
    return cls.from_dict(parse_json(text, "genotype JSON"))

  def save(self, path: str | os.PathLike) -> None:
    """Writes `to_json()` atomically, so a crash never leaves half a file."""
    atomic_write_text(path, self.to_json())

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Genotype":
    """Reads a genotype.json (of any family, see `from_dict`); errors name
    the file."""
    from bayesnas_tf.spaces import registry  # pylint: disable=g-import-not-at-top
    return registry.load_genotype(path)


# --- released genotypes (ALGORITHM.md 6) --------------------------------------
# Transcribed from the forward passes of the official
# `CNN/pre_trained/*/OneShot.py`; the trailing comments name the supernet edge
# each op came from, so they can be matched against the gamma tables.
_L001 = dict(
    normal=(
        (("sep5", "in0"),                                              # in0_0
         ("sep5", "in1"), ("max", "in1"), ("avg", "in1"), ("id", "in1")),  # in1_0
        (("max", "in0"), ("id", "in0")),                # in0_1 (in1_1 pruned)
        (("id", "in0"),                                                # in0_2
         ("max", "in1")),                                              # in1_2
        (("avg", "n0"),),                             # sel_0_3 (in1_3 pruned)
    ),
    reduce=(
        (("id", "in0"),                                   # in0_0 (BN+1x1 s2)
         ("sep3", "in1"), ("avg", "in1"), ("max", "in1"), ("sep5", "in1")),  # in1_0
        (("max", "in1"), ("avg", "in1")),             # in1_1 (sel_0_1 pruned)
        (("sep3", "in1"), ("avg", "in1")),            # in1_2 (sel_0_2 pruned)
        (("sep5", "n0"),),                 # sel_0_3 (stride 1) (in1_3 pruned)
    ),
)

KNOWN_GENOTYPES: Dict[str, Genotype] = {
    # CIFAR-10 Table 1, 3.02% error, 2.576M params.
    "bayesnas_l0.01": Genotype(
        **_L001, size_reduct="conv",
        search={"source": "CNN/pre_trained/0.01/OneShot.py",
                "lambda_child": 0.01, "dataset": "cifar10"}),
    # CIFAR-10, 3.197M params.
    "bayesnas_l0.007": Genotype(
        normal=(
            (("sep3", "in1"), ("id", "in1")),         # in1_0 (in0_0 pruned)
            # in0_1. The official module also declares in1_1 = max(in1) but
            # its forward pass never uses it; we follow the forward pass.
            (("sep3", "in0"), ("id", "in0")),
            (("id", "in0"),                                            # in0_2
             ("sep3", "in1")),                                         # in1_2
            (("sep5", "in1"), ("max", "in1"), ("avg", "in1"),          # in1_3
             ("id", "n0")),                                          # sel_0_3
        ),
        reduce=(
            (("sep5", "in0"), ("avg", "in0"),                          # in0_0
             ("avg", "in1"), ("max", "in1"), ("id", "in1"), ("sep5", "in1")),  # in1_0
            (("avg", "in1"),                                           # in1_1
             ("id", "n0")),                                          # sel_0_1
            (("avg", "in1"),                                           # in1_2
             ("sep5", "n0"), ("id", "n0")),                          # sel_0_2
            (("avg", "n0"), ("max", "n0")),           # sel_0_3 (in1_3 pruned)
        ),
        size_reduct="conv",
        search={"source": "CNN/pre_trained/0.007/OneShot.py",
                "lambda_child": 0.007, "dataset": "cifar10"}),
    # CIFAR-10, 2.512M params; its CReduct uses a factorized reduce (5.1).
    "bayesnas_l0.005": Genotype(
        normal=(
            (("max", "in1"), ("avg", "in1"), ("id", "in1")),  # in1_0 (in0_0 pruned)
            (("id", "in0"),                                            # in0_1
             ("sep5", "in1")),                                         # in1_1
            (("avg", "in0"),                                           # in0_2
             ("id", "in1"), ("max", "in1")),                           # in1_2
            (("sep5", "in1"),                                          # in1_3
             ("max", "n0")),                                         # sel_0_3
        ),
        reduce=(
            (("sep3", "in0"), ("sep5", "in0"), ("max", "in0"),         # in0_0
             ("avg", "in1"), ("max", "in1")),                          # in1_0
            (("max", "n0"), ("avg", "n0"), ("id", "n0")),  # sel_0_1 (in1_1 pruned)
            (("id", "in1"), ("max", "in1")),          # in1_2 (sel_0_2 pruned)
            (("sep3", "in1"), ("max", "in1"),                          # in1_3
             ("max", "n0")),                                         # sel_0_3
        ),
        size_reduct="factorized",
        search={"source": "CNN/pre_trained/0.005/OneShot.py",
                "lambda_child": 0.005, "dataset": "cifar10"}),
    # ImageNet, 4.009M params: pre_trained/imagenet/OneShot.py's cells are the
    # lambda = 0.01 CIFAR cells, with the single-conv size_reduct.
    "bayesnas_imagenet": Genotype(
        **_L001, size_reduct="conv",
        search={"source": "CNN/pre_trained/imagenet/OneShot.py",
                "lambda_child": 0.01, "dataset": "imagenet"}),
}
