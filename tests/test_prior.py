"""The HARD prior update (eq. 17-21) against hand-computed numbers and the
invariants of ALGORITHM.md 9.2 (items 1-7)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.ops import PRUNE_THRESHOLD
from bayesnas_tf.search import prior
from bayesnas_tf.search_space import BAYESNAS_SPACE


def test_threshold_and_entropy():  # 9.2 item 1
  assert PRUNE_THRESHOLD == pytest.approx(0.05854983152431917, abs=1e-17)
  for gamma in (0.01, 0.05, 0.0585, PRUNE_THRESHOLD * (1 - 1e-9),
                PRUNE_THRESHOLD * (1 + 1e-9), 0.0586, 0.1, 3.0):
    assert (float(prior.entropy(gamma)) <= 0) == (gamma <= PRUNE_THRESHOLD)
  assert float(prior.entropy(PRUNE_THRESHOLD)) == pytest.approx(0.0, abs=1e-12)


def test_harmonic_combination():  # 9.2 item 2
  s = np.array([0.01, 0.3, 2.0, 50.0])
  s_all = np.array([0.2, 1e9, 1e-9, 3.0])
  gamma = prior.harmonic(s, s_all).numpy()
  np.testing.assert_allclose(gamma, 1 / (1 / s + 1 / s_all), rtol=1e-12)
  assert np.all(gamma <= np.minimum(s, s_all) + 1e-15)
  assert gamma[1] == pytest.approx(0.3, rel=1e-8)   # s_all -> inf: gamma -> s
  assert gamma[2] < 1e-8                            # s_all -> 0: gamma -> 0
  three = prior.harmonic(s, s_all, np.array([1.0, 1.0, 1.0, 1.0])).numpy()
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
  # n0 -> n3: gamma_all = (1/s_all + 1/P)^-1, P = sum of op switches into n0.
  p_total = s[0, :7].sum() + s[1, :7].sum()
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
