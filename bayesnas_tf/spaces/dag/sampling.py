"""Random DAG-cell genotypes: the control group of --mode=study.

A random genotype has the same number of ops per cell type as a found one,
placed uniformly over the (edge, op) pairs of the space's cell DAG; a draw in
which an op reads a node that lost every input is redrawn, because the
search never produces one (Proposition 1).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces.dag.genotype import CELL_TYPES, Genotype
from bayesnas_tf.spaces.dag.space import SearchSpace

_MAX_DRAWS = 10000


def kept_op_counts(genotype: Genotype) -> Dict[str, int]:
  """Number of (op, input) pairs per cell type."""
  return {t: sum(len(node) for node in genotype.cell(t)) for t in CELL_TYPES}


def reads_empty_node(genotype: Genotype) -> bool:
  """Whether some op reads a node that has no input (ALGORITHM.md 3.6)."""
  for cell_type in CELL_TYPES:
    cell = genotype.cell(cell_type)
    for node in cell:
      for _, src in node:
        if src.startswith("n") and not cell[int(src[1:])]:
          return True
  return False


def random_genotype(space: SearchSpace, primitives: Sequence[str],
                    counts: Dict[str, int], rng: np.random.Generator,
                    metadata: Optional[Dict[str, Any]] = None) -> Genotype:
  """A uniformly random genotype with `counts[cell_type]` ops per cell type.

  Ops are `counts` distinct (edge, op) pairs of the space's cell DAG; draws
  in which an op reads a node without input are rejected.
  """
  for _ in range(_MAX_DRAWS):
    cells = {}
    for cell_type in CELL_TYPES:
      spec = space.cell(cell_type)
      pairs = [(e, op) for e in range(len(spec.edges)) for op in primitives]
      if counts[cell_type] > len(pairs):
        raise ConfigError(
            f"cannot draw {counts[cell_type]} ops from the {len(pairs)} "
            f"(edge, op) pairs of the {cell_type} cell")
      chosen = sorted(rng.choice(len(pairs), counts[cell_type], replace=False))
      nodes = {node: [] for node in spec.nodes}
      for index in chosen:
        e, op = pairs[index]
        src, dst = spec.edges[e]
        nodes[dst].append((op, src))
      cells[cell_type] = tuple(tuple(nodes[n]) for n in spec.nodes)
    genotype = Genotype(cells["normal"], cells["reduce"], search=metadata)
    if not reads_empty_node(genotype):
      return genotype
  raise ConfigError(
      f"no random genotype with {counts} ops reads only nodes that have an "
      f"input after {_MAX_DRAWS} draws")
