"""A NAS-Bench-201 cell as a validated, JSON-serialisable genotype.

The benchmark's string form lists the nodes 1..3, each as the ops on the
edges that enter it, `op~i` being the op on edge i -> j:

    |op~0|+|op~0|op~1|+|op~0|op~1|op~2|

`NB201Genotype.ops` holds the same six ops in `space.EDGES` order. JSON
schema, version 1 (what `save` writes as genotype.json)::

  {"schema_version": 1, "kind": "nb201",
   "arch": "|nor_conv_3x3~0|+|...|",
   "search": {...} or null}

`search` is provenance (lambda, seed, the op score, the posterior scores of
the chosen ops...); it takes no part in equality. TensorFlow-free.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

from bayesnas_tf.errors import GenotypeError
from bayesnas_tf.io_utils import atomic_write_text, json_provenance
from bayesnas_tf.spaces import base
from bayesnas_tf.spaces.nb201 import space

KIND = "nb201"
_FIELDS = ("schema_version", "kind", "arch", "search")
_EXAMPLE = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
            "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")


def looks_like_arch_string(text: Any) -> bool:
  """Whether `text` is meant as a benchmark string (it may still be invalid)."""
  return isinstance(text, str) and text.startswith("|") and "~" in text


def parse_arch_string(text: str) -> Tuple[str, ...]:
  """The benchmark string -> the six ops in `space.EDGES` order.

  Raises:
    GenotypeError: naming what is wrong (node count, an op, an input index).
  """
  if not isinstance(text, str) or not text.startswith("|") or not text.endswith("|"):
    raise GenotypeError(
        f"an NB201 cell string starts and ends with '|', e.g. {_EXAMPLE}; "
        f"received {text!r}")
  nodes = text[1:-1].split("|+|")
  if len(nodes) != space.NUM_NODES - 1:
    raise GenotypeError(
        f"an NB201 cell string lists {space.NUM_NODES - 1} nodes separated by "
        f"'+'; {text!r} lists {len(nodes)}")
  ops = []
  for j, node in enumerate(nodes, start=1):
    entries = node.split("|")
    if len(entries) != j:
      raise GenotypeError(
          f"node {j} of an NB201 cell string has {j} input(s) (op~0"
          f"{''.join(f'|op~{i}' for i in range(1, j))}); {text!r} gives "
          f"{len(entries)}: {node!r}")
    for i, entry in enumerate(entries):
      op, sep, source = entry.partition("~")
      if not sep or source != str(i):
        raise GenotypeError(
            f"input {i} of node {j} must read 'op~{i}'; received {entry!r} "
            f"in {text!r}")
      if op not in space.ALL_OPS:
        raise GenotypeError(
            f"unknown NB201 op {op!r} on edge {i}->{j}; valid ops are "
            f"{', '.join(space.ALL_OPS)}")
      ops.append(op)
  return tuple(ops)


def arch_string(ops) -> str:
  """The six ops in `space.EDGES` order -> the benchmark string."""
  nodes = []
  for j in range(1, space.NUM_NODES):
    nodes.append("|".join(f"{ops[space.EDGES.index((i, j))]}~{i}"
                          for i in range(j)))
  return "|" + "|+|".join(nodes) + "|"


@dataclasses.dataclass(frozen=True)
class NB201Genotype:
  """One op per edge of the NB201 cell (`space.EDGES` order).

  Attributes:
    ops: six op names from `space.ALL_OPS` (`none` for an absent edge).
    search: provenance of the search that found it; not compared.
  """

  ops: Tuple[str, ...]
  search: Optional[Mapping[str, Any]] = dataclasses.field(
      default=None, compare=False)

  SCHEMA_VERSION: ClassVar[int] = 1
  kind: ClassVar[str] = KIND
  family: ClassVar[str] = "nb201"

  def __post_init__(self):
    ops = tuple(self.ops)
    if len(ops) != len(space.EDGES):
      raise GenotypeError(
          f"an NB201 genotype has one op per edge, {len(space.EDGES)} in all; "
          f"received {len(ops)}: {list(ops)}")
    for edge, op in zip(space.EDGES, ops):
      if op not in space.ALL_OPS:
        raise GenotypeError(
            f"unknown NB201 op {op!r} on edge {space.edge_name(edge)}; valid "
            f"ops are {', '.join(space.ALL_OPS)}")
    object.__setattr__(self, "ops", ops)
    object.__setattr__(self, "search", json_provenance(self.search))

  # --- accessors ---------------------------------------------------------
  @property
  def arch(self) -> str:
    """The benchmark's string (the key of its table)."""
    return arch_string(self.ops)

  def __str__(self) -> str:
    return self.arch

  def op(self, src: int, dst: int) -> str:
    return self.ops[space.EDGES.index((src, dst))]

  def op_counts(self) -> Dict[str, int]:
    """How many edges carry each op (none included)."""
    return {op: sum(o == op for o in self.ops) for op in space.ALL_OPS}

  def nodes_without_input(self) -> Tuple[int, ...]:
    """Nodes 1..3 that do not depend on the cell input: every incoming edge
    is `none` or leaves such a node. (They compute zeros, or a constant
    where a conv op's BN adds its offset to zeros.)"""
    empty = []
    for j in range(1, space.NUM_NODES):
      live = [i for i in range(j)
              if self.op(i, j) != space.NONE and i not in empty]
      if not live:
        empty.append(j)
    return tuple(empty)

  # --- serialisation -----------------------------------------------------
  @classmethod
  def from_string(cls, text: str,
                  search: Optional[Mapping[str, Any]] = None) -> "NB201Genotype":
    return cls(parse_arch_string(text), search)

  def to_dict(self) -> Dict[str, Any]:
    return {"schema_version": self.SCHEMA_VERSION, "kind": KIND,
            "arch": self.arch,
            "search": (None if self.search is None
                       else json.loads(json.dumps(self.search)))}

  @classmethod
  def from_dict(cls, d: Any) -> "NB201Genotype":
    if not isinstance(d, Mapping) or d.get("kind") != KIND:
      raise GenotypeError(
          f"an NB201 genotype is a JSON object with \"kind\": \"{KIND}\"; "
          f"received {d!r}")
    unknown = [str(k) for k in d if k not in _FIELDS]
    if unknown:
      raise GenotypeError(
          f"unknown NB201 genotype field(s) {', '.join(map(repr, unknown))}; "
          f"valid fields are {', '.join(_FIELDS)}")
    base.check_schema_version(d.get("schema_version"), cls.SCHEMA_VERSION, KIND)
    if "arch" not in d:
      raise GenotypeError("an NB201 genotype needs the field 'arch' (the "
                          f"benchmark string, e.g. {_EXAMPLE})")
    return cls.from_string(d["arch"], d.get("search"))

  def result_json(self) -> str:
    """What result.json shows: the benchmark string."""
    return self.arch

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True, indent=2)

  def save(self, path: str | os.PathLike) -> None:
    atomic_write_text(path, self.to_json())


def edge_params(op: str, channels: int) -> int:
  """Trainable parameters of one cell op at C channels (NB201.md, "The cell").

  nor_conv_kxk: ReLU, k x k conv (no bias), affine BN: k^2 C^2 + 2C; skip,
  avg pool and none have none.
  """
  if op == "nor_conv_3x3":
    return 9 * channels * channels + 2 * channels
  if op == "nor_conv_1x1":
    return channels * channels + 2 * channels
  return 0


def residual_block_params(channels: int) -> int:
  """The stage transition C -> 2C (NB201.md step 3): two ReLU-Conv3x3-BN
  (18 C^2 + 4C and 36 C^2 + 4C) and the shortcut's 1x1 conv (2 C^2)."""
  return 56 * channels * channels + 8 * channels


def trainable_params(genotype: NB201Genotype, channels: int = 16,
                     cells_per_stage: int = 5, num_classes: int = 10,
                     image_channels: int = 3) -> int:
  """The parameter count of the benchmark network built from `genotype`.

  Every op of the genotype has its layers (the benchmark's InferCell builds
  them all, reachable or not). 1,531,546 for every edge nor_conv_3x3 at the
  benchmark's sizes (NB201.md).
  """
  total = 9 * image_channels * channels + 2 * channels      # stem conv + BN
  for stage in range(3):
    c = channels * 2 ** stage
    total += cells_per_stage * sum(edge_params(op, c) for op in genotype.ops)
    if stage < 2:
      total += residual_block_params(c)
  final = 4 * channels
  return total + 2 * final + final * num_classes + num_classes


BUILTIN_GENOTYPES: Dict[str, NB201Genotype] = {
    # The ResNet-like cell of NB201.md (94.36 in the table, 1,288,506 params).
    "nb201_resnet": NB201Genotype.from_string(
        _EXAMPLE, {"source": "NB201.md: the ResNet-like cell"}),
}
