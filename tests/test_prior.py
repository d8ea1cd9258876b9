"""The HARD prior update (eq. 17-21) against hand-computed numbers and the
invariants of ALGORITHM.md 9.2 (items 1-7)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.config import PRUNE_THRESHOLD
from bayesnas_tf.spaces.dag.ops import PRIMITIVES
from bayesnas_tf.search import prior
from bayesnas_tf.spaces.dag.derive import derive_genotype
from bayesnas_tf.spaces.dag.space import BAYESNAS_SPACE, CELL_TYPES, DARTS_SPACE


def test_threshold_and_entropy():  # 9.2 item 1
  assert PRUNE_THRESHOLD == pytest.approx(0.05854983152431917, abs=1e-17)
  for gamma in (0.01, 0.05, 0.0585, PRUNE_THRESHOLD * (1 - 1e-9),
                PRUNE_THRESHOLD * (1 + 1e-9), 0.0586, 0.1, 3.0):
    assert (float(prior.entropy(gamma)) <= 0) == (gamma <= PRUNE_THRESHOLD)
  assert float(prior.entropy(PRUNE_THRESHOLD)) == pytest.approx(0.0, abs=1e-12)


def test_harmonic_combination():  # 9.2 item 2
  s = np.array([0.01, 0.3, 2.0, 50.0])
  s_all = np.array([0.2, 1e9, 1e-9, 3.0])
  gamma = prior.harmonic(s, s_all)
  np.testing.assert_allclose(gamma, 1 / (1 / s + 1 / s_all), rtol=1e-12)
  assert np.all(gamma <= np.minimum(s, s_all) + 1e-15)
  assert gamma[1] == pytest.approx(0.3, rel=1e-8)   # s_all -> inf: gamma -> s
  assert gamma[2] < 1e-8                            # s_all -> 0: gamma -> 0
  three = prior.harmonic(s, s_all, np.array([1.0, 1.0, 1.0, 1.0]))
  assert np.all(three <= np.minimum(np.minimum(s, s_all), 1.0) + 1e-15)


def test_posterior_covariance_properties():  # 9.2 item 3
  gamma = np.array([0.5, 0.5, 0.5, 1e9])
  h = np.array([0.0, 1.0, 10.0, 4.0])
  c = prior.posterior_covariance(gamma, h).numpy()
  np.testing.assert_allclose(c, 1 / (1 / gamma + h), rtol=1e-12)   # eq. 17
  assert np.all(c > 0) and np.all(c <= gamma)
  assert c[0] == pytest.approx(0.5)                 # H = 0: C = gamma
  assert c[1] > c[2]                                # decreasing in H
  assert c[3] == pytest.approx(0.25, rel=1e-6)      # gamma -> inf: C -> 1/H


def test_alpha_identity_and_eq18():  # 9.2 item 4
  rng = np.random.default_rng(0)
  gamma = rng.uniform(0.05, 3.0, 50)
  h = rng.uniform(0.0, 100.0, 50)
  c = prior.posterior_covariance(gamma, h).numpy()
  alpha = prior.alpha_coefficient(gamma, h).numpy()
  np.testing.assert_allclose(alpha, 1 / gamma - c / gamma**2, rtol=1e-9,
                             atol=1e-12)
  np.testing.assert_allclose(alpha, h / (1 + gamma * h), rtol=1e-12)
  assert np.all(alpha >= 0)
  np.testing.assert_allclose(np.sqrt(alpha), np.sqrt(gamma - c) / gamma,
                             rtol=1e-6)  # eq. 18, n = 1


def _update(gamma, gates, hessian, lambdas, dependency="official",
            predecessors=None, kept=None):
  gates = np.asarray(gates, np.float64)
  _, e, g = gates.shape
  gamma = np.broadcast_to(np.asarray(gamma, np.float64), (e, g))
  kept = np.ones((e, g), bool) if kept is None else kept
  return prior.update_group(gamma, np.ones((e, g)), gates, hessian, lambdas,
                            kept, predecessors, dependency)


def test_update_hand_computed():
  # Two cells, one edge, gates [op, all]; gamma(0) = 1; lambda 0.5 for both.
  gates = [[[0.3, 1.0]], [[0.4, 1.0]]]                  # (n=2, E=1, G=2)
  hessian = [[[1.0, 0.5]], [[3.0, 0.5]]]
  result = _update(1.0, gates, hessian, [0.5, 0.5])
  # op: H' = [2, 6]; C = [1/3, 1/7]; alpha = [2/3, 6/7];
  # omega = sqrt(2/3 + 6/7); s = ||(0.3, 0.4)|| / omega = 0.5 / omega.
  np.testing.assert_allclose(result.hessian_scaled.numpy()[:, 0, 0], [2, 6])
  np.testing.assert_allclose(result.covariance.numpy()[:, 0, 0], [1 / 3, 1 / 7])
  np.testing.assert_allclose(result.alpha.numpy()[:, 0, 0], [2 / 3, 6 / 7])
  assert result.omega.numpy()[0, 0] == pytest.approx(math.sqrt(2 / 3 + 6 / 7))
  assert result.switch.numpy()[0, 0] == pytest.approx(0.4050462936504913)
  # edge gate: H' = [1, 1]; alpha = [1/2, 1/2]; omega = 1; s = sqrt(2).
  assert result.omega.numpy()[0, 1] == pytest.approx(1.0)
  assert result.gamma.numpy()[0, 1] == pytest.approx(math.sqrt(2))
  # op: gamma = (1/s_op + 1/gamma_all)^-1.
  assert result.gamma.numpy()[0, 0] == pytest.approx(0.3148653887859182)
  assert result.kept.numpy().all()


def test_update_prunes_small_gates_and_edge_gate_rules_all():
  gates = np.array([[[0.01, 0.9, 1.0], [0.9, 0.9, 0.02]]])   # (1, 2, 3)
  hessian = np.full_like(gates, 100.0)
  result = _update(1.0, gates, hessian, [0.01, 0.01, 0.01])
  kept = result.kept.numpy()
  assert kept[0].tolist() == [False, True, True]
  # Edge 1's gate is below threshold, so all its ops go (9.2 item 2).
  assert result.gamma.numpy()[1, 2] <= PRUNE_THRESHOLD
  assert kept[1].tolist() == [False, False, False]
  np.testing.assert_array_less(result.gamma.numpy()[1, :2],
                               result.gamma.numpy()[1, 2] + 1e-15)


def test_fixed_points():  # 9.2 item 5
  n = 6
  w = np.linspace(0.5, 1.5, n)
  gates = np.stack([w, w], axis=-1)[:, None, :]               # (6, 1, 2)
  small = _update(1.0, gates, np.full_like(gates, 1e-12), [1.0, 1.0])
  assert small.omega.numpy().max() < 1e-5
  assert small.switch.numpy().min() > 1e4        # s -> inf: nothing pruned
  assert small.kept.numpy().all()
  gamma = 0.7
  large = _update(gamma, gates, np.full_like(gates, 1e12), [1.0, 1.0])
  np.testing.assert_allclose(large.omega.numpy() ** 2, n / gamma, rtol=1e-6)
  np.testing.assert_allclose(
      large.switch.numpy(), np.linalg.norm(w) * math.sqrt(gamma) / math.sqrt(n),
      rtol=1e-6)


def test_update_is_symmetric_in_cells_and_one_value_per_group():  # 9.2 item 6
  rng = np.random.default_rng(3)
  gates = rng.normal(size=(6, 8, 8))
  hessian = rng.uniform(0, 5, size=(6, 8, 8))
  a = _update(0.8, gates, hessian, [0.01] * 7 + [0.02])
  b = _update(0.8, gates[::-1], hessian[::-1], [0.01] * 7 + [0.02])
  assert a.gamma.shape == (8, 8) and a.omega.shape == (8, 8)
  np.testing.assert_allclose(a.gamma.numpy(), b.gamma.numpy(), rtol=1e-12)
  np.testing.assert_allclose(a.omega.numpy(), b.omega.numpy(), rtol=1e-12)


def test_lambda_scales_the_hessian_per_column():
  gates = np.ones((1, 1, 2))
  hessian = np.full((1, 1, 2), 0.02)
  result = _update(1.0, gates, hessian, [0.01, 0.02])
  np.testing.assert_allclose(result.hessian_scaled.numpy()[0, 0], [2.0, 1.0])


def test_paper_dependency_adds_the_predecessor_term():
  spec = BAYESNAS_SPACE.normal          # edge 7 is n0 -> n3; edges 0, 1 enter n0
  pred = prior.predecessor_matrix(spec)
  assert np.flatnonzero(pred[7]).tolist() == [0, 1]
  assert pred[:7].sum() == 0
  rng = np.random.default_rng(1)
  gates = rng.uniform(0.2, 1.0, size=(2, 8, 8))
  hessian = rng.uniform(1, 10, size=(2, 8, 8))
  lambdas = [0.01] * 8
  official = _update(1.0, gates, hessian, lambdas, "official")
  paper = _update(1.0, gates, hessian, lambdas, "paper", pred)
  s = paper.switch.numpy()
  np.testing.assert_allclose(official.switch.numpy(), s)
  # Edges leaving cell inputs: no predecessor term.
  np.testing.assert_allclose(paper.gamma.numpy()[:7], official.gamma.numpy()[:7])
  # n0 -> n3: gamma_all = (1/s_all + 1/P)^-1, P = sum of the op switches
  # into n0 that survive this update.
  kept = paper.kept.numpy()
  assert kept[:2].sum() > 8            # the term below is not trivially 0
  p_total = sum((s[e, :7] * kept[e, :7]).sum() * kept[e, 7] for e in (0, 1))
  gamma_all = 1 / (1 / s[7, 7] + 1 / p_total)
  assert paper.gamma.numpy()[7, 7] == pytest.approx(gamma_all, rel=1e-12)
  np.testing.assert_allclose(paper.gamma.numpy()[7, :7],
                             1 / (1 / s[7, :7] + 1 / gamma_all), rtol=1e-12)


def test_paper_dependency_prunes_edges_out_of_a_dead_node():
  spec = BAYESNAS_SPACE.normal
  pred = prior.predecessor_matrix(spec)
  gates = np.ones((1, 8, 8))
  gates[0, 0, :7] = 1e-4                # both edges into n0 (almost) off
  gates[0, 1, :7] = 1e-4
  result = _update(1.0, gates, np.full_like(gates, 50.0), [0.01] * 8,
                   "paper", pred)
  assert not result.kept.numpy()[7].any()


def _into_n0_case(op_gate, edge_gate):
  """Six normal cells; every gate 1 except those of the two edges into n0."""
  gates = np.ones((6, 8, 8))
  gates[:, :2, :7] = op_gate
  gates[:, :2, 7] = edge_gate
  hessian = np.full_like(gates, 100.0)    # H' = 1e4: s ~ RMS(w) (ALGORITHM 3.5)
  pred = prior.predecessor_matrix(BAYESNAS_SPACE.normal)
  return gates, hessian, pred


def test_pruned_edge_gates_into_a_node_switch_off_its_outgoing_edges():
  # Proposition 1 within one update: both w_all into n0 are pruned while the
  # op gates stay large. With the switches from before pruning, n0 -> n3 was
  # kept (gamma ~ 0.48) although n0 has no input left.
  gates, hessian, pred = _into_n0_case(op_gate=1.0, edge_gate=0.01)
  result = _update(1.0, gates, hessian, [0.01] * 8, "paper", pred)
  kept = result.kept.numpy()
  assert not kept[0, 7] and not kept[1, 7]        # both edge gates pruned
  assert result.switch.numpy()[:2, :7].min() > 0.9  # op switches stay large
  assert not kept[7].any()                        # n0 -> n3 is off
  assert result.gamma.numpy()[7].max() < 1e-9
  assert kept[2:7].all()                          # the rest is untouched
  stale = 1 / (1 / result.switch.numpy()[7, 7] +
               1 / result.switch.numpy()[:2, :7].sum())
  assert stale > 0.4                              # what the stale term gave
  # The official two-term form keeps it, as the official code does.
  official = _update(1.0, gates, hessian, [0.01] * 8, "official")
  assert official.kept.numpy()[7].all()


def test_ops_pruned_one_by_one_into_a_node_switch_off_its_outgoing_edges():
  # All 14 op gates into n0 are ~0.05: each is pruned on its own, but their
  # stale switch sum (~0.7) used to keep n0 -> n3 (gamma ~ 0.29).
  gates, hessian, pred = _into_n0_case(op_gate=0.05, edge_gate=1.0)
  result = _update(1.0, gates, hessian, [0.01] * 8, "paper", pred)
  kept, s = result.kept.numpy(), result.switch.numpy()
  assert not kept[:2, :7].any() and kept[:2, 7].all()
  assert s[:2, :7].sum() == pytest.approx(0.7, rel=0.01)
  assert not kept[7].any()
  genotype = derive_genotype(BAYESNAS_SPACE, PRIMITIVES,
                             {"normal": kept, "reduce": np.ones((8, 8), bool)})
  assert genotype.normal[0] == ()
  assert genotype.normal[3] and all(src != "n0" for _, src in genotype.normal[3])


def _nodes_read_without_input(genotype, cell_type):
  cell = genotype.cell(cell_type)
  return {src for node in cell for _, src in node
          if src.startswith("n") and not cell[int(src[1:])]}


@pytest.mark.parametrize("space", [BAYESNAS_SPACE, DARTS_SPACE],
                         ids=lambda s: s.name)
def test_derived_genotype_never_reads_a_node_without_input(space):
  # Property test over random gate/Hessian draws (gates often near the
  # threshold, whole edges or nodes often off), for one and two updates.
  rng = np.random.default_rng(7)
  preds = {t: prior.predecessor_matrix(space.cell(t)) for t in CELL_TYPES}
  degenerate = 0
  for draw in range(150):
    kept = {}
    for t in CELL_TYPES:
      n, e = rng.integers(1, 4), len(space.cell(t).edges)
      scale = rng.choice([0.03, 0.06, 0.2, 1.0], size=(1, e, 8))
      gates = rng.uniform(0, 1, size=(n, e, 8)) * scale
      hessian = rng.uniform(0, 200, size=(n, e, 8)) * (rng.uniform(size=(n, e, 8)) < 0.9)
      first = _update(1.0, gates, hessian, [0.01] * 8, "paper", preds[t])
      result = first
      if draw % 2:   # a second update on the survivors (masked gates are 0)
        mask = first.kept.numpy()
        result = prior.update_group(first.gamma, first.omega, gates * mask,
                                    hessian * mask, [0.01] * 8, mask, preds[t])
      kept[t] = result.kept.numpy()
    genotype = derive_genotype(space, PRIMITIVES, kept)
    for t in CELL_TYPES:
      assert not _nodes_read_without_input(genotype, t), (draw, t, genotype.cell(t))
      degenerate += sum(1 for node in genotype.cell(t) if not node)
  assert degenerate > 20       # the draws do empty some nodes


def test_predecessors_must_come_first():
  pred = np.zeros((2, 2))
  pred[0, 1] = 1.0
  with pytest.raises(ValueError, match="topological order"):
    _update(1.0, np.ones((1, 2, 3)), np.ones((1, 2, 3)), [1.0] * 3, "paper", pred)


def test_single_gate_edges_follow_their_parent():
  # One gate per edge (op and edge gate merged), a chain 0 -> 1 -> 2: pruning
  # the parent prunes the whole subtree in the same update.
  pred = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float64)
  gates = np.array([[[0.01], [1.0], [1.0]]])
  result = _update(1.0, gates, np.full((1, 3, 1), 100.0), [0.01], "paper", pred)
  assert result.kept.numpy()[:, 0].tolist() == [False, False, False]
  gates[0, 0, 0] = 1.0
  result = _update(1.0, gates, np.full((1, 3, 1), 100.0), [0.01], "paper", pred)
  s = result.switch.numpy()[:, 0]
  assert result.kept.numpy()[:, 0].all()
  assert result.gamma.numpy()[1, 0] == pytest.approx(1 / (1 / s[1] + 1 / s[0]))
  assert result.gamma.numpy()[2, 0] == pytest.approx(1 / (1 / s[2] + 1 / s[1]))


def test_pruned_groups_stay_frozen():
  gates = np.ones((2, 1, 3))
  kept = np.array([[False, True, True]])
  gamma_prev = np.array([[0.01, 1.0, 1.0]])
  result = prior.update_group(gamma_prev, np.array([[0.3, 1.0, 1.0]]), gates,
                              np.ones_like(gates), [1.0, 1.0, 1.0], kept)
  assert result.gamma.numpy()[0, 0] == 0.01
  assert result.omega.numpy()[0, 0] == 0.3
  assert not result.kept.numpy()[0, 0]


def test_group_lasso_penalty():  # 9.2 item 7
  w = tf.constant([[[0.5, -2.0, 1.0]]])                      # n = 1
  lam = tf.constant([0.01, 0.01, 0.02])
  penalty = prior.group_lasso_penalty({"normal": w}, {"normal": tf.ones((1, 3))}, lam)
  assert float(penalty) == pytest.approx(0.01 * 2.5 + 0.02 * 1.0, rel=1e-5)
  w6 = tf.constant(np.random.default_rng(0).normal(size=(6, 2, 3)), tf.float32)
  omega = tf.constant([[0.5, 1.0, 2.0], [1.5, 0.1, 1.0]])
  penalty = prior.group_lasso_penalty({"normal": w6}, {"normal": omega}, lam)
  expected = np.sum(lam.numpy() * omega.numpy() *
                    np.linalg.norm(w6.numpy(), axis=0))
  assert float(penalty) == pytest.approx(expected, rel=1e-5)
  with tf.GradientTape() as tape:
    zeros = tf.Variable(tf.zeros((2, 1, 3)))
    value = prior.group_lasso_penalty({"normal": zeros}, {"normal": tf.ones((1, 3))}, lam)
  grad = tape.gradient(value, zeros)
  assert np.all(np.isfinite(grad.numpy()))    # defined at w = 0


def test_hard_prior_init_and_update():
  hp = prior.HardPrior({"normal": 2, "reduce": 1}, {"normal": 3, "reduce": 3}, 4)
  assert hp.gamma["normal"].numpy().tolist() == np.ones((3, 4)).tolist()
  official = prior.HardPrior({"normal": 2}, {"normal": 3}, 4, init="official", seed=5)
  values = official.gamma["normal"].numpy()
  assert values.min() > 0 and values.max() < 1 and len(np.unique(values)) == 12
  gates = {"normal": tf.ones((2, 3, 4)), "reduce": tf.ones((1, 3, 4)) * 1e-3}
  hessian = {"normal": tf.ones((2, 3, 4)), "reduce": tf.ones((1, 3, 4))}
  hp.update(gates, hessian, np.full(4, 0.01), {}, "official", PRUNE_THRESHOLD)
  assert int(hp.updates.numpy()) == 1
  assert hp.kept_masks()["normal"].all()
  assert not hp.kept_masks()["reduce"].any()
