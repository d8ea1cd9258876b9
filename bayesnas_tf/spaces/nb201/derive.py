"""One op per edge: an NB201 genotype from the kept masks and the posterior.

The benchmark's cells carry exactly one op per edge, while BayesNAS keeps
every op whose gamma clears the threshold (ALGORITHM.md 3.6). So, per edge:

* the whole edge was pruned (its edge gate w_all, or every op gate): `none`
  ("the zero op rules all", Sec. 4.2);
* otherwise the kept op with the largest posterior score (`OP_SCORES`);
* finally, an edge whose source node has no input (every edge into it is
  `none`, directly or through its own source) becomes `none` too: it would
  read zeros (Proposition 1 on this DAG; the prior's eq. 8 term already
  prunes such edges within an update, this also covers the one-op choice).

Scores, for a group (one edge and op across the n cells of the type):

* `gamma`: the prior variance of eq. 6 / 8 that the pruning rule reads
  (entropy 1/2 ln(2 pi e gamma) is monotone in it): the paper's own measure
  of an op's relevance.
* `snr`: sum_i w_i^2 / C_i, the squared posterior mean over the posterior
  variance of eq. 17 (C_i = (1/gamma + H_i/lambda)^-1) summed over the
  group: how many posterior standard deviations the gates lie from zero,
  the evidence that the op is not the zero op. It is
  sum (w_i^2 / gamma + w_i^2 H_i / lambda), and the second term dominates
  (H_i / lambda is 2e3-2e4 against 1/gamma of 3-25 for the kept ops of the
  NB201 runs); that term is twice the second-order increase of the loss when
  the op is removed (Optimal Brain Damage's saliency), in units of lambda.
  Unlike gamma (which for large H' tends to the RMS of the gates) it is
  unchanged when an op's output is scaled by c and its gate by 1/c (H grows
  by c^2, C shrinks by 1/c^2), so an op whose own weights carry its scale is
  not judged by the small gate that is left.
* `w`: the gate norm ||w_g|| alone (what DARTS-like methods rank by).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces.nb201 import space
from bayesnas_tf.spaces.nb201.genotype import NB201Genotype

OP_SCORES = ("gamma", "snr", "w")


def op_scores(posterior: Mapping[str, np.ndarray], score: str) -> np.ndarray:
  """(E, O) score of every (edge, op) group from one cell type's posterior.

  Args:
    posterior: arrays "gamma" (E, G), "w" (n, E, G), "covariance" (n, E, G)
      for one cell type; the last gate column is the edge gate.
    score: one of `OP_SCORES`.
  """
  if score == "gamma":
    return np.asarray(posterior["gamma"], np.float64)[:, :-1]
  w = np.asarray(posterior["w"], np.float64)[:, :, :-1]
  if score == "w":
    return np.sqrt(np.sum(w * w, axis=0))
  if score == "snr":
    covariance = np.asarray(posterior["covariance"], np.float64)[:, :, :-1]
    return np.sum(w * w / np.maximum(covariance, 1e-30), axis=0)
  raise ConfigError(f"--op_score must be one of {', '.join(OP_SCORES)}; "
                    f"received {score!r}")


def derive_nb201_genotype(kept: np.ndarray, scores: np.ndarray,
                          ops=space.OPS,
                          search: Optional[Mapping[str, Any]] = None
                          ) -> NB201Genotype:
  """The genotype of one kept mask (E, O + 1) and score table (E, O)."""
  kept = np.asarray(kept) > 0.5
  scores = np.asarray(scores, np.float64)
  if kept.shape != (len(space.EDGES), len(ops) + 1):
    raise ValueError(f"kept must have shape {(len(space.EDGES), len(ops) + 1)}; "
                     f"received {kept.shape}")
  chosen = []
  for e in range(len(space.EDGES)):
    alive = np.flatnonzero(kept[e, :-1]) if kept[e, -1] else np.array([], int)
    if alive.size == 0:
      chosen.append(space.NONE)
      continue
    chosen.append(ops[int(alive[np.argmax(scores[e, alive])])])
  # Edges that leave a node without input read zeros: `none`.
  has_input = {0: True}
  for j in range(1, space.NUM_NODES):
    for k in space.CELL_SPEC.edges_into(j):
      if not has_input[space.EDGES[k][0]]:
        chosen[k] = space.NONE
    has_input[j] = any(chosen[k] != space.NONE
                       for k in space.CELL_SPEC.edges_into(j))
  return NB201Genotype(tuple(chosen), search)


def chosen_scores(genotype: NB201Genotype, scores: np.ndarray,
                  ops=space.OPS) -> Dict[str, float]:
  """{edge: score of its op} for the provenance of a derived genotype."""
  return {space.edge_name(edge): float(scores[e, ops.index(op)])
          for e, (edge, op) in enumerate(zip(space.EDGES, genotype.ops))
          if op != space.NONE}
