"""The hierarchical ARD ("HARD") prior over the gates and its update (eq. 17-21).

Notation (ALGORITHM.md 2, 3.5): for one cell type, a *group* g is the same
(edge, gate) in all n cells of that type. Arrays have shape (E, G) per group
or (n, E, G) per cell, with G = num_ops + 1 and the LAST column the edge gate
`w_all` (the paper's i -> i' identity, Sec. 4.2).

One update, for every group (vectorised):

    H'_i  = H_i / lambda_g                          data Hessian as a precision
    C_i   = (1/gamma + H'_i)^-1                     eq. 17 (per cell)
    alpha_i = 1/gamma - C_i/gamma^2                 tangent of log|.| (App. A)
    omega = sqrt(sum_i alpha_i)                     eq. 18, group sum (eq. 21)
    s     = ||w_g||_2 / omega                       eq. 19, group form
    gamma_all = s_all                               (official)
              = (1/s_all + 1/P)^-1                  (paper: + predecessors)
    gamma_op  = (1/s_op + 1/gamma_all)^-1           eq. 6 / 8
    pruned  <=> gamma <= 1/(2 pi e)                 entropy 1/2 ln(2 pi e gamma) <= 0

where P is the sum of the op switches s of the edges that enter the edge's
source node and survive this same update (eq. 8's middle term; none for edges
leaving a cell input), so Proposition 1 holds after every single update: a
node whose inputs are all pruned switches off every edge that leaves it.
gamma is the group's previous value, the same in every cell, so the official
code's "last cell" leak and its broadcasting bug (ALGORITHM.md 3.5) do not
arise. All prior arithmetic runs in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from bayesnas_tf.config.search import PRUNE_THRESHOLD
from bayesnas_tf.spaces.base import op_and_edge_lambdas

DTYPE = tf.float64
# Guards the official code lacks (ALGORITHM.md 9.1): no division by a zero
# gamma, omega or switch.
EPSILON = 1e-12

DEPENDENCIES = ("paper", "official")
INITS = ("paper", "official")


def entropy(gamma):
  """Entropy of the N(0, gamma) prior, 1/2 ln(2 pi e gamma) (Sec. 5.3)."""
  gamma = tf.convert_to_tensor(gamma, DTYPE)
  return 0.5 * tf.math.log(2.0 * np.pi * np.e * gamma)


def harmonic(*terms):
  """(sum_k 1/t_k)^-1, the series combination of eq. 6 and 8.

  Never larger than its smallest term; a zero term gives zero.
  """
  inverse = 0.0
  for term in terms:  # Broadcasting sum of float64 arrays.
    inverse = inverse + 1.0 / np.maximum(np.asarray(term, np.float64), EPSILON)
  return 1.0 / inverse


def posterior_covariance(gamma, hessian_scaled):
  """eq. 17: C = (1/gamma + H')^-1, elementwise (diagonal Laplace)."""
  gamma = tf.maximum(tf.cast(gamma, DTYPE), EPSILON)
  return gamma / (1.0 + gamma * tf.cast(hessian_scaled, DTYPE))


def alpha_coefficient(gamma, hessian_scaled):
  """alpha = 1/gamma - C/gamma^2 (the slope of the log-det term, App. A).

  Computed as the algebraically identical H'/(1 + gamma H'), which has no
  cancellation when gamma H' is small (ALGORITHM.md 3.5, closed form).
  """
  gamma = tf.maximum(tf.cast(gamma, DTYPE), EPSILON)
  h = tf.maximum(tf.cast(hessian_scaled, DTYPE), 0.0)
  return h / (1.0 + gamma * h)


def predecessor_matrix(spec) -> np.ndarray:
  """(E, E) 0/1 matrix: P[e, e'] = 1 when edge e' enters the source of e.

  `spec`: a cell layout of a search backend's space (`space.cell(t)`, see
  spaces/base.py): `edges` and `predecessor_edges(e)`.
  """
  matrix = np.zeros((len(spec.edges), len(spec.edges)), dtype=np.float64)
  for e in range(len(spec.edges)):
    for p in spec.predecessor_edges(e):
      matrix[e, p] = 1.0
  return matrix


def group_statistics(gamma_prev, weights, hessian_scaled, axes):
  """eq. 17-19 for groups of elements that share one gamma.

  The one implementation of the re-weighting used by both the architecture
  search (a group = one gate across the cells of a type) and network
  compression (a group = one filter or channel of a kernel).

  Args:
    gamma_prev: gamma(t-1) per group; broadcastable against `weights` once
      the reduced `axes` are kept as size-1 dimensions.
    weights: the group members' values w.
    hessian_scaled: H / lambda per member, same shape as `weights`.
    axes: the axes of `weights` that run over the members of one group.

  Returns:
    (covariance C, alpha) per member and (omega, switch s) per group, where
    C = (1/gamma + H')^-1 (eq. 17), alpha = 1/gamma - C/gamma^2,
    omega = sqrt(sum alpha) (eq. 18, group sum), s = ||w_g||_2 / omega (eq. 19).
  """
  weights = tf.cast(weights, DTYPE)
  gamma_members = tf.cast(gamma_prev, DTYPE)
  covariance = posterior_covariance(gamma_members, hessian_scaled)
  alpha = alpha_coefficient(gamma_members, hessian_scaled)
  omega = tf.sqrt(tf.reduce_sum(alpha, axis=axes))
  norm = tf.sqrt(tf.reduce_sum(tf.square(weights), axis=axes))
  switch = norm / tf.maximum(omega, EPSILON)
  return covariance, alpha, omega, switch


@dataclasses.dataclass(frozen=True)
class GroupUpdate:
  """The result of one update for one cell type (shapes in the module doc)."""
  hessian_scaled: tf.Tensor  # (n, E, G)  H / lambda
  covariance: tf.Tensor      # (n, E, G)  C, eq. 17
  alpha: tf.Tensor           # (n, E, G)
  omega: tf.Tensor           # (E, G)     eq. 18
  switch: tf.Tensor          # (E, G)     s, eq. 19
  gamma: tf.Tensor           # (E, G)     eq. 6 / 8
  kept: tf.Tensor            # (E, G)     bool


def _dependent_gammas(switch: np.ndarray, kept_prev: np.ndarray,
                      predecessors: Optional[np.ndarray], threshold: float):
  """gamma of eq. 6 / 8 and the pruning decision, edge by edge.

  Edges are visited in their (topological) order, so the predecessor term of
  an edge is built from the op switches that *survive this update* on the
  edges entering its source node (an op counts only while its own gate and
  its edge gate `w_all` are kept). This is Proposition 1 / Remark 1 within a
  single update: when every op into a node is off, P = 0, so gamma_all = 0
  and every edge leaving that node is off too; with stale (pre-pruning)
  switches a node could lose all its inputs and still feed kept ops.

  With one gate per edge (G = 1, e.g. a tree edge whose op and edge gate are
  merged) that gate is both the edge gate and the op.

  Args:
    switch: (E, G) s of this update (0 for groups pruned earlier).
    kept_prev: (E, G) bool, groups still alive before this update.
    predecessors: (E, E) 0/1 from `predecessor_matrix` (row e marks the
      edges entering e's source), or None for the official two-term form.
    threshold: prune when gamma <= threshold.

  Returns:
    gamma (E, G) float64 and kept (E, G) bool.
  """
  num_edges, num_gates = switch.shape
  single = num_gates == 1
  gamma = np.zeros_like(switch)
  kept = np.zeros_like(kept_prev, dtype=bool)
  surviving = np.zeros(num_edges)   # sum of the surviving op switches per edge
  for e in range(num_edges):
    gamma_edge = switch[e, -1]
    if predecessors is not None:
      sources = np.flatnonzero(predecessors[e])
      if np.any(sources >= e):
        raise ValueError(
            f"edge {e} has predecessor edge(s) {sources[sources >= e].tolist()} "
            "that do not come before it; edges must be in topological order")
      if sources.size:
        # eq. 8: gamma_all = (1/s_all + 1/P)^-1, P = the surviving switches.
        gamma_edge = harmonic(gamma_edge, surviving[sources].sum())
    if single:
      gamma[e, 0] = gamma_edge
    else:
      # The edge gate is updated first; its ops use the new gamma_all (eq. 8).
      gamma[e, -1] = gamma_edge
      gamma[e, :-1] = harmonic(switch[e, :-1], gamma_edge)
    kept[e] = kept_prev[e] & (gamma[e] > threshold)
    if single:
      surviving[e] = switch[e, 0] * kept[e, 0]
    else:
      surviving[e] = np.sum(switch[e, :-1] * kept[e, :-1]) * kept[e, -1]
  return gamma, kept


def update_group(gamma_prev, omega_prev, gates, hessian, lambdas, kept_prev,
                 predecessors: Optional[np.ndarray] = None,
                 dependency: str = "paper",
                 threshold: float = PRUNE_THRESHOLD) -> GroupUpdate:
  """One update of eq. 17-20 and the pruning rule, for one cell type.

  Args:
    gamma_prev: (E, G) gamma(t-1) of each group.
    omega_prev: (E, G) omega(t-1); kept for groups that are already pruned.
    gates: (n, E, G) effective gate values w of every cell of the type.
    hessian: (n, E, G) Hessian diagonal of the data loss w.r.t. each gate.
    lambdas: (G,) lambda per gate column (lambda_child for ops,
      lambda_origin for the edge gate); H is divided by it (the official
      convention: lambda is the likelihood noise variance, ALGORITHM.md 2).
    kept_prev: (E, G) bool; pruned groups stay pruned and frozen.
    predecessors: (E, E) from `predecessor_matrix`, needed for "paper".
    dependency: "paper" (eq. 8 with the predecessor term) or "official"
      (own switch and edge gate only, as the official code).
    threshold: prune when gamma <= threshold.
  """
  if dependency not in DEPENDENCIES:
    raise ValueError(f"dependency must be one of {DEPENDENCIES}; got {dependency!r}")
  gamma_prev = tf.cast(gamma_prev, DTYPE)
  omega_prev = tf.cast(omega_prev, DTYPE)
  gates = tf.cast(gates, DTYPE)
  kept_prev = tf.cast(kept_prev, tf.bool)
  lambdas = tf.cast(lambdas, DTYPE)
  hessian_scaled = tf.maximum(tf.cast(hessian, DTYPE), 0.0) / lambdas

  # A group is one (edge, gate) across the n cells of the type (axis 0).
  covariance, alpha, omega, switch = group_statistics(
      gamma_prev[tf.newaxis], gates, hessian_scaled, axes=[0])
  switch = tf.where(kept_prev, switch, tf.zeros_like(switch))

  use_predecessors = dependency == "paper" and predecessors is not None
  gamma, kept = _dependent_gammas(
      switch.numpy(), kept_prev.numpy(),
      predecessors if use_predecessors else None, threshold)
  gamma, kept = tf.constant(gamma, DTYPE), tf.constant(kept)
  # Groups pruned earlier keep their values: their gates are masked, their
  # Hessian is zero, and they take no further part (DESIGN.md 5, step 5).
  gamma = tf.where(kept_prev, gamma, gamma_prev)
  omega = tf.where(kept_prev, omega, omega_prev)
  return GroupUpdate(hessian_scaled, covariance, alpha, omega, switch, gamma,
                     kept)


def group_lasso_penalty(gates_by_type: Mapping[str, tf.Tensor],
                        omega_by_type: Mapping[str, tf.Tensor],
                        lambdas) -> tf.Tensor:
  """The re-weighted group lasso of eq. 21.

  sum over cell types, edges and gates of lambda_g omega_g ||w_g||_2, where
  w_g stacks the gate over the cells of the type. The norm has a small
  epsilon so its gradient is defined at w = 0 (ALGORITHM.md 9.1).
  """
  total = 0.0
  for cell_type, gates in gates_by_type.items():
    norms = tf.sqrt(tf.reduce_sum(tf.square(gates), axis=0) + EPSILON)
    weights = tf.cast(omega_by_type[cell_type], gates.dtype) * tf.cast(
        lambdas, gates.dtype)
    total += tf.reduce_sum(weights * norms)
  return total


def gate_lambdas(num_ops: int, lambda_child: float,
                 lambda_origin: float) -> np.ndarray:
  """(G,) lambda per gate column: ops use lambda_child, w_all lambda_origin."""
  return op_and_edge_lambdas(num_ops, lambda_child, lambda_origin)


class HardPrior(tf.Module):
  """The prior state of every group, as checkpointable variables.

  Per cell type: gamma, omega, switch (E, G); covariance, hessian (raw H),
  hessian_scaled (H / lambda) and the gates w that entered the last update
  (n, E, G); kept (E, G) as 0/1; pruned_at (E, G), the update (1, 2, ...)
  that pruned a group, 0 while it is kept.
  """

  def __init__(self, cells_per_type: Mapping[str, int],
               edges_per_type: Mapping[str, int], num_gates: int,
               init: str = "paper", seed: int = 0, name: str = "hard_prior"):
    super().__init__(name=name)
    if init not in INITS:
      raise ValueError(f"init must be one of {INITS}; got {init!r}")
    rng = np.random.default_rng([seed, 17])
    self.cell_types = tuple(cells_per_type)
    self.gamma: Dict[str, tf.Variable] = {}
    self.omega: Dict[str, tf.Variable] = {}
    self.switch: Dict[str, tf.Variable] = {}
    self.covariance: Dict[str, tf.Variable] = {}
    self.hessian: Dict[str, tf.Variable] = {}
    self.hessian_scaled: Dict[str, tf.Variable] = {}
    self.kept: Dict[str, tf.Variable] = {}
    self.gates: Dict[str, tf.Variable] = {}
    self.pruned_at: Dict[str, tf.Variable] = {}
    for cell_type in self.cell_types:
      group_shape = (edges_per_type[cell_type], num_gates)
      cell_shape = (cells_per_type[cell_type],) + group_shape
      if init == "paper":
        # Algorithm 1: gamma(0) = omega(0) = 1.
        gamma0, omega0 = np.ones(group_shape), np.ones(group_shape)
      else:
        # The official code draws torch.rand(1) per entry (ALGORITHM.md 2);
        # here one U(0, 1) draw per group, since groups share their values.
        gamma0, omega0 = rng.uniform(size=group_shape), rng.uniform(size=group_shape)
      var = lambda value, label: tf.Variable(
          value, dtype=DTYPE, trainable=False, name=f"{cell_type}_{label}")
      self.gamma[cell_type] = var(gamma0, "gamma")
      self.omega[cell_type] = var(omega0, "omega")
      self.switch[cell_type] = var(np.zeros(group_shape), "switch")
      self.covariance[cell_type] = var(np.zeros(cell_shape), "covariance")
      self.hessian[cell_type] = var(np.zeros(cell_shape), "hessian")
      self.hessian_scaled[cell_type] = var(np.zeros(cell_shape), "hessian_scaled")
      self.kept[cell_type] = var(np.ones(group_shape), "kept")
      self.gates[cell_type] = var(np.zeros(cell_shape), "gates")
      self.pruned_at[cell_type] = var(np.zeros(group_shape), "pruned_at")
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="updates")

  def omega_values(self) -> Dict[str, tf.Tensor]:
    return {t: self.omega[t].value() for t in self.cell_types}

  def kept_masks(self) -> Dict[str, np.ndarray]:
    return {t: self.kept[t].numpy() > 0.5 for t in self.cell_types}

  def update(self, gates_by_type: Mapping[str, tf.Tensor],
             hessian_by_type: Mapping[str, tf.Tensor], lambdas,
             predecessors_by_type: Mapping[str, np.ndarray],
             dependency: str, threshold: float) -> Dict[str, GroupUpdate]:
    """Runs `update_group` for every cell type and stores the results."""
    results = {}
    for cell_type in self.cell_types:
      result = update_group(
          self.gamma[cell_type], self.omega[cell_type],
          gates_by_type[cell_type], hessian_by_type[cell_type], lambdas,
          self.kept[cell_type].value() > 0.5,
          predecessors_by_type.get(cell_type), dependency, threshold)
      self.gamma[cell_type].assign(result.gamma)
      self.omega[cell_type].assign(result.omega)
      self.switch[cell_type].assign(result.switch)
      self.covariance[cell_type].assign(result.covariance)
      self.hessian[cell_type].assign(tf.cast(hessian_by_type[cell_type], DTYPE))
      self.hessian_scaled[cell_type].assign(result.hessian_scaled)
      newly_pruned = tf.logical_and(self.kept[cell_type].value() > 0.5,
                                    tf.logical_not(result.kept))
      self.pruned_at[cell_type].assign(tf.where(
          newly_pruned, tf.cast(self.updates + 1, DTYPE),
          self.pruned_at[cell_type]))
      self.kept[cell_type].assign(tf.cast(result.kept, DTYPE))
      self.gates[cell_type].assign(tf.cast(gates_by_type[cell_type], DTYPE))
      results[cell_type] = result
    self.updates.assign_add(1)
    return results
