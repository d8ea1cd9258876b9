"""The search loop in-process: Algorithm 1 step 5 between iterations, the
pairing of Hessians and gates cell by cell, and the penalty's omega."""

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf import config as config_lib
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.search import prior as prior_lib
from bayesnas_tf.search import search_loop

PRIMITIVES = ("sep3", "max", "avg", "id")


def _config(model_dir, iterations=2):
  # 4 cells (N R R N): two cells of each type, so every group spans 2 cells.
  return config_lib.ExperimentConfig(
      mode="search",
      data=config_lib.DataConfig(dataset="digits", batch_size=32, crop_padding=1,
                                 cutout=0, max_train_examples=256,
                                 max_eval_examples=64),
      supernet=config_lib.SupernetConfig(cells=4, channels=4, primitives=PRIMITIVES),
      search=config_lib.SearchConfig(
          lambda_child=0.1, lambda_origin=0.05, learning_rate=0.05,
          arch_learning_rate=0.1, warmup_fraction=0.25, search_epochs=2,
          iterations=iterations,
          # A run this short barely trains, so its Hessian is small and
          # gamma stays well above 1/(2 pi e) (as it should: little data,
          # little evidence). A higher threshold makes it prune part of
          # each cell type, which is what these tests need to observe:
          # update 1's op gammas measured 0.34-0.45 (edge gates 0.77-0.86),
          # so 0.43 keeps 1-2 ops of each type and the edge gates.
          prune_threshold=0.43),
      runtime=config_lib.RuntimeConfig(model_dir=str(model_dir), progress=False),
  ).validate()


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_dataset("digits")


@pytest.fixture(scope="module")
def two_iterations(digits, tmp_path_factory):
  """A 2-iteration search with the gates recorded around every phase."""
  search = search_loop.BayesNASSearch(
      _config(tmp_path_factory.mktemp("loop") / "run"), digits,
      tf.distribute.get_strategy())
  records = []
  run_phase = search._run_training_phase

  def recording(phase, writer):
    entry = {"iteration": int(search.state.iteration.numpy()), "phase": phase,
             "raw_before": [v.numpy() for v in search.net.arch_variables],
             "effective_before": {t: g.numpy() for t, g in
                                  search.net.gates_by_type().items()},
             "masks": search.net.masks_by_type()}
    run_phase(phase, writer)
    entry["raw_after"] = [v.numpy() for v in search.net.arch_variables]
    records.append(entry)

  search._run_training_phase = recording
  result = search.run()
  return search, records, result


def _record(records, iteration, phase):
  (entry,) = [r for r in records
              if r["iteration"] == iteration and r["phase"] == phase]
  return entry


def test_gates_restart_at_one_before_the_next_iteration(two_iterations):
  # Algorithm 1 step 5: "fix w = 1, train the pruned net in the standard way".
  _, records, _ = two_iterations
  searched = _record(records, 0, search_loop.SEARCH)["raw_after"]
  assert max(np.abs(v - 1).max() for v in searched) > 1e-3  # gates had moved
  warmup = _record(records, 1, search_loop.WARMUP)
  for cell_type, gates in warmup["effective_before"].items():
    mask = warmup["masks"][cell_type]
    assert not mask.all() and mask.any()   # pruned some, kept some
    # Every gate is 1 where the mask keeps it and exactly 0 where it is pruned.
    np.testing.assert_array_equal(gates, np.broadcast_to(mask, gates.shape))
  for before, after in zip(warmup["raw_before"], warmup["raw_after"]):
    np.testing.assert_array_equal(before, 1.0)
    np.testing.assert_array_equal(after, before)   # warm-up: weights only


def test_last_update_keeps_the_trained_gates_and_records_them(two_iterations):
  search, records, _ = two_iterations
  trained = _record(records, 1, search_loop.SEARCH)["raw_after"]
  for now, then in zip(search.net.arch_variables, trained):
    np.testing.assert_array_equal(now.numpy(), then)
  # posterior.json's w are the effective gates that entered the last
  # update: equal to today's gates where still kept; where update 2 pruned,
  # today's gate is masked to 0 but the record keeps the trained value.
  pruned_last = 0
  for cell_type, gates in search.net.gates_by_type().items():
    recorded, now = search.prior.gates[cell_type].numpy(), gates.numpy()
    kept = search.prior.kept_masks()[cell_type]
    np.testing.assert_allclose(recorded[:, kept], now[:, kept], rtol=1e-6)
    last = search.prior.pruned_at[cell_type].numpy() == 2
    assert np.all(now[:, last] == 0.0) and np.all(recorded[:, last] != 0.0)
    pruned_last += last.sum()
  assert pruned_last > 0


def test_pruned_at_and_masks(two_iterations):
  search, _, _ = two_iterations
  for cell_type in search.prior.cell_types:
    pruned_at = search.prior.pruned_at[cell_type].numpy()
    kept = search.prior.kept_masks()[cell_type]
    assert set(np.unique(pruned_at)) <= {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(pruned_at == 0, kept)
    # Pruned in update 1: masked during iteration 2, so its gate entered
    # update 2 as exactly 0 with an exactly zero Hessian.
    first = pruned_at == 1
    assert np.all(search.prior.gates[cell_type].numpy()[:, first] == 0.0)
    assert np.all(search.prior.hessian[cell_type].numpy()[:, first] == 0.0)


def test_hessian_and_gate_stacks_line_up_cell_by_cell(digits, tmp_path):
  search = search_loop.BayesNASSearch(_config(tmp_path / "run", 1), digits,
                                      tf.distribute.get_strategy())
  net = search.net
  assert net.cell_types == ["normal", "reduce", "reduce", "normal"]
  # A different gate masked in every cell: the zero Hessian must land where
  # the zero gate is, cell by cell.
  masked = {0: (2, 1), 1: (0, 0), 2: (5, 3), 3: (6, 2)}   # cell: (edge, gate)
  for cell_index, (edge, gate) in masked.items():
    mask = np.ones(len(PRIMITIVES) + 1, np.float32)
    mask[gate] = 0.0
    net.cells[cell_index].edges[edge].set_mask(mask)
  _, batch = next(search.phase_batches(search_loop.UPDATE, 0))
  per_cell = search.hessian_fn("ggn")(batch, tf.constant([0, 0], tf.int64))
  hessians = net.stack_by_type(per_cell)
  gates = net.gates_by_type()
  for cell_type in ("normal", "reduce"):
    h, g = hessians[cell_type].numpy(), gates[cell_type].numpy()
    assert h.shape == g.shape == (2, 8, len(PRIMITIVES) + 1)
    np.testing.assert_array_equal(h == 0.0, g == 0.0)
  assert hessians["reduce"].numpy()[0, 0, 0] == 0.0      # cell 1 -> reduce[0]
  assert hessians["reduce"].numpy()[1, 5, 3] == 0.0      # cell 2 -> reduce[1]
  assert hessians["normal"].numpy()[1, 6, 2] == 0.0      # cell 3 -> normal[1]


def test_gate_lambdas_put_lambda_origin_in_the_edge_gate_column(two_iterations):
  search, _, _ = two_iterations
  np.testing.assert_array_equal(prior_lib.gate_lambdas(3, 0.1, 0.05),
                                [0.1, 0.1, 0.1, 0.05])
  np.testing.assert_array_equal(search.lambdas, [0.1] * len(PRIMITIVES) + [0.05])
  groups = search.posterior_dict()["groups"]
  for group in groups:
    expected = 0.05 if group["gate"] == "all" else 0.1
    assert group["lambda"] == expected
    if group["pruned_at"] != 1:     # H of this update, scaled by its lambda
      np.testing.assert_allclose(group["H_scaled"],
                                 np.array(group["H"]) / expected, rtol=1e-12)
  assert any(max(g["H"]) > 0 for g in groups if g["gate"] == "all")


def test_train_step_penalty_reads_the_current_omega(two_iterations):
  search, _, _ = two_iterations
  step = search.train_step_fn(train_gates=True)
  batches = search.phase_batches(search_loop.SEARCH, 0)
  lambdas = tf.constant(search.lambdas, tf.float32)
  for scale in (1.0, 3.0):   # the same traced step, omega changed in between
    for cell_type in search.prior.cell_types:
      search.prior.omega[cell_type].assign(
          np.full(search.prior.omega[cell_type].shape, scale))
    omega = {t: tf.cast(v, tf.float32) for t, v in search.prior.omega_values().items()}
    expected = float(prior_lib.group_lasso_penalty(
        search.net.gates_by_type(), omega, lambdas))
    _, penalty, _ = step(next(batches)[1])
    assert float(penalty) == pytest.approx(expected, rel=1e-5)
  assert expected > 2.5 * float(prior_lib.group_lasso_penalty(
      search.net.gates_by_type(), {t: tf.ones_like(v) for t, v in omega.items()},
      lambdas))


def test_groups_span_every_cell_of_their_type(two_iterations):
  # End to end with two cells per type: one gamma per group, one mask shared
  # by all cells of a type, and a genotype derived from it.
  search, _, result = two_iterations
  groups = search.posterior_dict()["groups"]
  assert {len(g["w"]) for g in groups} == {2}
  masks = {}
  for cell, cell_type in zip(search.net.cells, search.net.cell_types):
    mask = np.stack([edge.mask.numpy() for edge in cell.edges])
    masks.setdefault(cell_type, mask)
    np.testing.assert_array_equal(mask, masks[cell_type])
    np.testing.assert_array_equal(mask > 0.5, search.prior.kept_masks()[cell_type])
  assert result.genotype == search.genotype()
  assert 0.0 <= result.test_accuracy <= 1.0
