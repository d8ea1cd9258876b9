"""The BayesNAS search loop (DESIGN.md 5; the paper's Algorithm 1/2).

Per iteration t = 1..T:
  phase 0, warm-up: weights only, gates frozen at 1 (from iteration 2 on
    they restart at 1 after the prune, Algorithm 1 step 5), cutout on, on a
    disjoint fraction of the training split;
  phase 1, search: weights and gates jointly on the rest, loss =
    cross-entropy + re-weighted group lasso (eq. 21) + weight decay on weights;
  phase 2, update: Hessian diagonal w.r.t. the gates (BN in inference mode),
    the update of eq. 17-20, pruning at gamma <= 1/(2 pi e), and masking.

Everything is written for `tf.distribute`: variables, optimizers and the
prior live under `strategy.scope()`, steps go through `strategy.run`, losses
are scaled by the global batch and Hessian sums are all-reduced.

All state (weights, gates, masks, both optimizers, prior, iteration / phase /
step) is checkpointed; the data order and augmentation are pure functions of
(seed, iteration, phase, epoch, position), so a killed search resumes at the
last checkpoint and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.errors import TrainingDivergedError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.io_utils import output_errors
from bayesnas_tf.nn import bn_statistics
from bayesnas_tf.nn import fused_sgd
from bayesnas_tf.runtime import checkpointing
from bayesnas_tf.runtime import distribute
from bayesnas_tf.runtime import precision
from bayesnas_tf.runtime import preemption
from bayesnas_tf.runtime import progress
from bayesnas_tf.runtime.checkpointing import restore_latest
from bayesnas_tf.runtime.checkpointing import variables_by_path
from bayesnas_tf.runtime.event_writer import EventWriter
from bayesnas_tf.search import diagnostics
from bayesnas_tf.search import hessian as hessian_lib
from bayesnas_tf.search import prior as prior_lib
from bayesnas_tf.search import summaries
from bayesnas_tf.spaces import registry

PHASES = ("warmup", "search", "update")
WARMUP, SEARCH, UPDATE = range(3)
POSTERIOR_SCHEMA_VERSION = 1
LOG_EVERY = 10


@dataclasses.dataclass(frozen=True)
class SearchResult:
  model_dir: str
  genotype: Any  # Of the family of --search_space (spaces/base.py).
  genotype_path: str
  posterior_path: str
  test_accuracy: float
  # The supernet's test accuracy after the last joint phase, before the last
  # update pruned it (None when a resumed run skipped that phase).
  accuracy_before_pruning: Optional[float] = None
  # {cell type: {"kept": k, "total": n}} ops of the found cells.
  ops: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
  # search/diagnostics.py: why the result may mean little (empty: fine).
  warnings: Tuple[str, ...] = ()
  # --benchmark_table: the found cell's accuracy and percentile in the table
  # (search/benchmark_table.py), or {"table", "error"}; None without one.
  benchmark: Optional[Dict[str, Any]] = None


class SearchState(tf.Module):
  """Where the search is: iteration, phase, step within the phase."""

  def __init__(self):
    super().__init__(name="search_state")
    self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.phase = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.finished = tf.Variable(False, trainable=False)


class BayesNASSearch:
  """Runs (or resumes) one search in `config.runtime.model_dir`."""

  def __init__(self, config: ExperimentConfig, dataset: data_lib.ImageDataset,
               strategy: tf.distribute.Strategy):
    self.config = config
    self.strategy = strategy
    self.model_dir = config.runtime.model_dir
    # The network, its gate layout and its genotype come from the backend of
    # the family of --search_space (spaces/base.py).
    self.backend = registry.get_family(
        config.supernet.search_space).search_backend(config)
    self.space = self.backend.space
    search, data = config.search, config.data
    seed = config.runtime.seed

    x_train, y_train = data_lib.subset(
        dataset.x_train, dataset.y_train, data.max_train_examples, seed)
    x_test, y_test = data_lib.subset(
        dataset.x_test, dataset.y_test, data.max_eval_examples, 0)
    self.dataset = dataset
    warmup_idx, search_idx = data_lib.split_indices(
        len(x_train), search.warmup_fraction, seed)
    self.splits = {WARMUP: (x_train[warmup_idx], y_train[warmup_idx]),
                   SEARCH: (x_train[search_idx], y_train[search_idx])}
    self.test = (x_test, y_test)
    self.batch_size = data.batch_size
    self.steps_per_epoch = {}
    for phase, (x, _) in self.splits.items():
      steps = data_lib.num_batches(len(x), self.batch_size)
      if steps == 0 and (phase == SEARCH or search.warmup_epochs > 0):
        raise ConfigError(
            f"--batch_size={self.batch_size} is larger than the {PHASES[phase]} "
            f"split ({len(x)} examples); lower --batch_size or "
            "change --warmup_fraction")
      self.steps_per_epoch[phase] = steps
    self.phase_steps = {WARMUP: search.warmup_epochs * self.steps_per_epoch[WARMUP],
                        SEARCH: search.search_epochs * self.steps_per_epoch[SEARCH]}
    num_replicas = strategy.num_replicas_in_sync
    if self.batch_size % num_replicas:
      raise ConfigError(
          f"--batch_size={self.batch_size} must be divisible by the "
          f"{num_replicas} replicas of --strategy={config.runtime.strategy}")
    self.augment = {
        WARMUP: data_lib.AugmentConfig(data.crop_padding, data.flip, data.cutout),
        # The official search epoch uses crop and flip but no cutout.
        SEARCH: data_lib.AugmentConfig(data.crop_padding, data.flip, 0),
        UPDATE: data_lib.AugmentConfig(0, False, 0),
    }
    self.mean, self.std = dataset.mean, dataset.std
    self.lambdas = self.backend.gate_lambdas()
    # The entropy rule prunes gamma <= 1/(2 pi e) for gates that start at
    # the paper's w(0) = 1. Gates that start at another w(0) (nb201: 1/4)
    # are measured in units of it: s ~ RMS(w) scales with w(0)
    # (ALGORITHM.md 3.5), and a fixed threshold would prune 1/w(0) times
    # harder. So the rule reads gamma <= w(0) / (2 pi e).
    self.prune_threshold = search.prune_threshold * self.backend.gate_init
    self.accuracy_before_update: Optional[float] = None
    self.warnings: Tuple[str, ...] = ()
    self._build()

  # --- construction -------------------------------------------------------
  def _build(self) -> None:
    cfg = self.config
    search = cfg.search
    keras.utils.set_random_seed(cfg.runtime.seed)
    with self.strategy.scope():
      # The network computes in --dtype_policy; its variables stay float32.
      with precision.policy_scope(cfg.runtime.dtype_policy):
        self.net = self.backend.build_network(self.dataset.num_classes,
                                              self.dataset.image_shape)
      clip = search.grad_clip or None
      self.weight_optimizer = fused_sgd.MomentumSGD(
          search.learning_rate, momentum=search.momentum, global_clipnorm=clip,
          name="weight_sgd")
      # Gates: their own SGD, no weight decay (ALGORITHM.md 3.3).
      self.arch_optimizer = fused_sgd.MomentumSGD(
          search.arch_learning_rate, momentum=search.arch_momentum,
          name="arch_sgd")
      self.weight_optimizer.build(self.net.weight_variables)
      self.arch_optimizer.build(self.net.arch_variables)
      types = self.net.present_cell_types
      self.prior = prior_lib.HardPrior(
          {t: len(self.net.cells_of_type(t)) for t in types},
          {t: len(self.space.cell(t).edges) for t in types},
          len(self.lambdas), search.init, cfg.runtime.seed)
      self.state = SearchState()
      self.loss_scale = precision.make_loss_scale(cfg.runtime.dtype_policy)
    self.predecessors = {t: prior_lib.predecessor_matrix(self.space.cell(t))
                         for t in self.net.present_cell_types}
    extra = {} if self.loss_scale is None else {"loss_scale": self.loss_scale}
    self.checkpoint = tf.train.Checkpoint(
        net=variables_by_path(self.net), weight_optimizer=self.weight_optimizer,
        arch_optimizer=self.arch_optimizer, prior=self.prior, state=self.state,
        **extra)
    self.manager = checkpointing.make_manager(
        self.checkpoint, os.path.join(self.model_dir, "checkpoints"),
        cfg.runtime.keep_checkpoints)
    self.preemption = preemption.Watcher(self.strategy)
    self._step_fns: Dict[str, object] = {}

  def _restore(self) -> None:
    latest = restore_latest(self.checkpoint, self.manager)
    if not latest:
      return
    self.net.sync_active_ops()
    logging.info("resumed from %s: iteration %d, phase %s, step %d", latest,
                 int(self.state.iteration.numpy()) + 1,
                 PHASES[int(self.state.phase.numpy())],
                 int(self.state.step.numpy()))

  def _save(self) -> None:
    checkpointing.save(self.manager, int(self.state.global_step.numpy()))

  # --- step functions -----------------------------------------------------
  def train_step_fn(self, train_gates: bool):
    """The (cached) distributed step: weights, and gates when `train_gates`."""
    key = f"train_{train_gates}"
    if key in self._step_fns:
      return self._step_fns[key]
    net, strategy = self.net, self.strategy
    search = self.config.search
    weight_vars, arch_vars = net.weight_variables, net.arch_variables
    num_replicas = strategy.num_replicas_in_sync
    global_batch = self.batch_size
    lambdas = tf.constant(self.lambdas, tf.float32)
    weight_decay = search.weight_decay

    def replica_step(images, labels):
      with tf.GradientTape() as tape:
        logits = tf.cast(net(images, training=True), tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits)
        ce = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        loss = ce
        penalty = tf.constant(0.0)
        if train_gates:
          omega = {t: tf.cast(v, tf.float32)
                   for t, v in self.prior.omega_values().items()}
          penalty = prior_lib.group_lasso_penalty(
              net.gates_by_type(), omega, lambdas)
          loss += penalty / num_replicas
      variables = weight_vars + (arch_vars if train_gates else [])
      # float16: the gradients are the scaled loss's, and both optimizers
      # skip a step whose gradients overflowed (precision.LossScale).
      grads = (tape.gradient(loss, variables) if self.loss_scale is None
               else self.loss_scale.gradient(tape, loss, variables))
      # Gates of a fully pruned edge are unconnected: their gradient is 0.
      grads = [tf.zeros_like(v) if g is None else g
               for v, g in zip(variables, grads)]
      # PyTorch SGD semantics: grad += wd * w on every non-gate weight (BN
      # included), i.e. 0.5 wd ||W||^2 in the loss (ALGORITHM.md 9.1).
      grads[:len(weight_vars)] = distribute.add_weight_decay(
          grads[:len(weight_vars)], weight_vars, weight_decay,
          None if self.loss_scale is None else self.loss_scale.scale_value)
      # Clipping of the all-reduced gradient (Keras clips each replica's
      # own before it all-reduces; distribute.clip_summed_gradients).
      clip = search.grad_clip
      if clip and self.loss_scale is not None:
        clip = clip * self.loss_scale.scale_value
      updates = [(self.weight_optimizer, distribute.clip_summed_gradients(
          grads[:len(weight_vars)], clip), weight_vars)]
      if train_gates:
        updates.append(
            (self.arch_optimizer, grads[len(weight_vars):], arch_vars))
      if self.loss_scale is None:
        for optimizer, optimizer_grads, optimizer_vars in updates:
          optimizer.apply_gradients(zip(optimizer_grads, optimizer_vars))
      else:
        self.loss_scale.apply(updates)
      correct = tf.reduce_sum(tf.cast(
          tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels),
          tf.float32))
      return tf.reduce_sum(per_example), penalty, correct

    @tf.function(jit_compile=self.config.runtime.jit_compile or None)
    def step(batch):
      images, labels = batch
      ce_sum, penalty, correct = strategy.run(replica_step, args=(images, labels))
      sum_ = lambda t: strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)
      return (sum_(ce_sum) / global_batch,
              strategy.reduce(tf.distribute.ReduceOp.MEAN, penalty, axis=None),
              sum_(correct) / global_batch)

    self._step_fns[key] = step
    return step

  def hessian_fn(self, method: Optional[str] = None):
    """(batch, seed) -> per-cell gate Hessians summed over the global batch."""
    method = method or self.config.search.hessian
    key = f"hessian_{method}"
    if key in self._step_fns:
      return self._step_fns[key]
    net, strategy = self.net, self.strategy

    def replica_fn(images, labels, seed):
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      seed = seed + tf.stack([0, tf.cast(replica, seed.dtype)])
      # Curvature stays float32 under a mixed policy: the traced Hessian is
      # the float32 network's, on the same variables (precision.py).
      with precision.float32_policy(net):
        return hessian_lib.gate_hessian(net, images, labels, method, seed)

    def fn(batch, seed):
      images, labels = batch
      per_replica = strategy.run(replica_fn, args=(images, labels, seed))
      return [strategy.reduce(tf.distribute.ReduceOp.SUM, h, axis=None)
              for h in per_replica]

    # The exact oracle does one HVP per gate; tracing it would unroll them.
    # diag_backprop routes max pools with MaxPoolWithArgmax, which XLA lacks.
    jit = (self.config.runtime.jit_compile and method != "diag_backprop") or None
    fn = fn if method == "exact" else tf.function(fn, jit_compile=jit)
    self._step_fns[key] = fn
    return fn

  def eval_fn(self):
    if "eval" in self._step_fns:
      return self._step_fns["eval"]
    net, strategy = self.net, self.strategy

    def replica_fn(images, labels):
      logits = net(images, training=False)
      correct = tf.reduce_sum(tf.cast(tf.equal(
          tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32))
      # Padding examples (label -1, distribute.distribute_dataset) never count.
      return correct, tf.reduce_sum(tf.cast(labels >= 0, tf.float32))

    @tf.function(jit_compile=self.config.runtime.jit_compile or None)
    def fn(batch):
      correct, count = strategy.run(replica_fn, args=batch)
      return (strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
              strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None))

    self._step_fns["eval"] = fn
    return fn

  # --- data -----------------------------------------------------------------
  def phase_batches(self, phase: int, start_step: int):
    """Yields (step, distributed batch) for one phase from `start_step` on."""
    x, y = self.splits[SEARCH if phase == UPDATE else phase]
    spe = self.steps_per_epoch[SEARCH if phase == UPDATE else phase]
    total = self.config.search.hessian_batches if phase == UPDATE else self.phase_steps[phase]
    iteration = int(self.state.iteration.numpy())
    step = start_step
    while step < total:
      epoch, skip = divmod(step, spe)
      dataset = data_lib.make_train_dataset(
          x, y, batch_size=self.batch_size, seed=self.config.runtime.seed,
          stream=(iteration, phase, epoch), mean=self.mean, std=self.std,
          augment=self.augment[phase], skip_batches=skip)
      dataset = dataset.take(min(spe - skip, total - step))
      for batch in distribute.distribute_dataset(self.strategy, dataset,
                                                 self.batch_size):
        yield step, batch
        step += 1

  def evaluate(self) -> float:
    x, y = self.test
    dataset = data_lib.make_eval_dataset(
        x, y, batch_size=self.config.data.eval_batch_size, mean=self.mean,
        std=self.std)
    fn = self.eval_fn()
    correct = count = 0.0
    for batch in distribute.distribute_dataset(
        self.strategy, dataset, self.config.data.eval_batch_size, pad=True):
      c, n = fn(batch)
      correct += float(c)
      count += float(n)
    return correct / max(count, 1.0)

  # --- phases ---------------------------------------------------------------
  def _run_training_phase(self, phase: int, writer) -> None:
    start = int(self.state.step.numpy())
    total = self.phase_steps[phase]
    iteration = int(self.state.iteration.numpy())
    if start >= total:
      return
    logging.info("iteration %d/%d, %s phase: steps %d..%d", iteration + 1,
                 self.config.search.iterations, PHASES[phase], start + 1, total)
    step_fn = self.train_step_fn(train_gates=phase == SEARCH)
    bar = progress.for_runtime(
        self.config.runtime,
        f"iteration {iteration + 1}/{self.config.search.iterations}, {PHASES[phase]}",
        total, start=start, batch_size=self.batch_size)
    every = self.config.runtime.checkpoint_every
    for step, batch in self.phase_batches(phase, start):
      ce, penalty, accuracy = (float(v) for v in step_fn(batch))
      if not (math.isfinite(ce) and math.isfinite(penalty)):
        raise TrainingDivergedError(
            f"the loss became {'NaN' if math.isnan(ce + penalty) else 'infinite'} "
            f"in iteration {iteration + 1}, {PHASES[phase]} phase, step {step + 1}; "
            "lower --learning_rate / --arch_learning_rate or --lambda_child and "
            f"start a new --model_dir ({self.model_dir} keeps its last good "
            "checkpoint)")
      self.state.step.assign(step + 1)
      self.state.global_step.assign_add(1)
      global_step = int(self.state.global_step.numpy())
      if phase == SEARCH:
        bar.update(step + 1, loss=ce, acc=accuracy, penalty=penalty)
      else:
        bar.update(step + 1, loss=ce, acc=accuracy)
      if global_step % LOG_EVERY == 0:
        with writer.as_default(step=global_step):
          tf.summary.scalar(f"{PHASES[phase]}/cross_entropy", ce)
          tf.summary.scalar(f"{PHASES[phase]}/accuracy", accuracy)
          if phase == SEARCH:
            tf.summary.scalar("search/group_lasso", penalty)
      if (step + 1) % every == 0 and step + 1 < total:
        self._save()
      # After the last step the phase still re-estimates the BN statistics:
      # the check after its end checkpoint (run) covers that step.
      if step + 1 < total:
        self.preemption.check(self._save, f"iteration {iteration + 1}, "
                              f"{PHASES[phase]} phase, step {step + 1}")
    bar.end()
    self.reestimate_batch_norm(phase)
    accuracy = self.evaluate()
    # The accuracy before the update prunes (reported in result.json).
    self.accuracy_before_update = accuracy
    logging.info("iteration %d, after %s: test accuracy %.4f", iteration + 1,
                 PHASES[phase], accuracy)
    with writer.as_default(step=int(self.state.global_step.numpy())):
      tf.summary.scalar(f"eval/accuracy_after_{PHASES[phase]}", accuracy)

  def _run_update_phase(self, writer) -> None:
    iteration = int(self.state.iteration.numpy())
    search = self.config.search
    fn = self.hessian_fn()
    totals = None
    batches = 0
    logging.info("iteration %d/%d, update phase: %s Hessian over %d batch(es)",
                 iteration + 1, search.iterations, search.hessian,
                 search.hessian_batches)
    bar = progress.for_runtime(
        self.config.runtime,
        f"iteration {iteration + 1}/{search.iterations}, {search.hessian} Hessian",
        search.hessian_batches, batch_size=self.batch_size, unit="batch")
    for step, batch in self.phase_batches(UPDATE, 0):
      seed = tf.constant([self.config.runtime.seed, 1000 * iteration + step],
                         tf.int64)
      h = fn(batch, seed)
      totals = h if totals is None else [a + b for a, b in zip(totals, h)]
      batches += 1
      bar.update(batches)
      # Nothing has changed since the search phase ended: a checkpoint here
      # resumes at the start of this update.
      self.preemption.check(self._save, f"iteration {iteration + 1}, Hessian "
                            f"batch {batches}")
    bar.end()
    if not batches:
      raise ConfigError(
          "no batch is available for the Hessian; lower --batch_size")
    # The Hessian is a sum over one batch, averaged over the batches.
    hessian_by_type = self.net.stack_by_type(
        [tf.cast(h, tf.float64) / batches for h in totals])
    if not all(np.all(np.isfinite(h.numpy())) for h in hessian_by_type.values()):
      # The prior would prune every gate whose gamma is NaN: say so instead.
      raise TrainingDivergedError(
          f"the gate Hessian of iteration {iteration + 1} is not finite: the "
          "supernet's activations overflowed in inference mode; lower "
          "--learning_rate / --arch_learning_rate (nb201: or --gate_init) "
          f"and start a new --model_dir ({self.model_dir} keeps its last "
          "good checkpoint)")
    gates_by_type = self.net.gates_by_type()
    results = self.prior.update(
        gates_by_type, hessian_by_type, self.lambdas, self.predecessors,
        search.dependency, self.prune_threshold)
    masks = self.prior.kept_masks()
    self.net.set_masks({t: m.astype(np.float32) for t, m in masks.items()})
    self._step_fns.clear()  # Re-trace without the pruned ops.
    if iteration + 1 < search.iterations:
      self._reset_gates()
    else:  # The pruned supernet that the search reports.
      self.reestimate_batch_norm(UPDATE)
    with writer.as_default(step=int(self.state.global_step.numpy())):
      for t, result in results.items():
        tf.summary.histogram(f"prior/{t}/gamma", result.gamma)
        tf.summary.histogram(f"prior/{t}/log10_gamma",
                             tf.math.log(tf.maximum(result.gamma, 1e-30)) / math.log(10.0))
        tf.summary.histogram(f"prior/{t}/hessian", hessian_by_type[t])
        tf.summary.histogram(f"prior/{t}/omega", result.omega)
        tf.summary.scalar(f"prior/{t}/pruned_fraction",
                          1.0 - float(np.mean(masks[t])))
    kept = self.backend.kept_ops(masks)
    logging.info("iteration %d update (hessian=%s over %d batch(es)): kept ops %s",
                 iteration + 1, search.hessian, batches, kept)
    genotype = self._write_outputs()
    summaries.write_update_summaries(
        writer, int(self.state.global_step.numpy()),
        self.posterior_dict()["groups"],
        diagnostics.op_counts(self.backend, masks), genotype)

  def reestimate_batch_norm(self, phase: int) -> None:
    """Fresh BN moving statistics for evaluation and the Hessian
    (bn_statistics.py), from un-augmented search-split batches."""
    x, y = self.splits[SEARCH]
    dataset = data_lib.make_train_dataset(
        x, y, batch_size=self.batch_size, seed=self.config.runtime.seed,
        stream=(int(self.state.iteration.numpy()), len(PHASES) + phase, 0),
        mean=self.mean, std=self.std, augment=self.augment[UPDATE])
    if "bn_statistics" not in self._step_fns:  # Traced once per structure.
      self._step_fns["bn_statistics"] = bn_statistics.MovingStatisticsEstimator(
          bn_statistics.batch_norm_layers(self.net),
          lambda images: self.net(images, training=True), self.strategy)
    self._step_fns["bn_statistics"](distribute.distribute_dataset(
        self.strategy, dataset.take(bn_statistics.SEARCH_BATCHES),
        self.batch_size))

  def _reset_gates(self) -> None:
    """Algorithm 1 step 5: "fix w = 1, train the pruned net".

    Before the next iteration every surviving gate restarts at w(0) (1, or
    the space's own start, e.g. nb201's 1/4; edge gates at 1; pruned ones
    stay masked, so their effective gate stays 0) and the gates' SGD
    momentum is cleared: the next warm-up trains the weights of the pruned
    net at w = w(0), and its joint phase shrinks the gates from there. After
    the last update the gates are left as trained, so the reported accuracy
    is that of the trained, pruned supernet (the derived network of
    --mode=retrain has w = 1 by construction).
    """
    for cell in self.net.cells:
      for edge in cell.edges:
        for variable in edge.gate_variables:
          start = 1.0 if variable is getattr(edge, "w_all", None) else (
              getattr(edge, "gate_init", 1.0))
          variable.assign(tf.fill(variable.shape, start))
    for velocity in self.arch_optimizer.momentums:
      velocity.assign(tf.zeros_like(velocity))

  # --- outputs --------------------------------------------------------------
  def posterior_dict(self) -> dict:
    cfg = self.config
    gate_names = list(self.backend.gate_names)
    arrays = self.posterior_arrays()
    groups = []
    for t in self.prior.cell_types:
      spec = self.space.cell(t)
      values = dict(arrays[t], pruned_at=self.prior.pruned_at[t].numpy())
      for e, edge_name in enumerate(spec.edge_names):
        for g, gate in enumerate(gate_names):
          # The gates that entered the last update (they restart at 1
          # afterwards when another iteration follows).
          w = values["w"][:, e, g]
          groups.append({
              "cell_type": t, "edge": edge_name, "gate": gate,
              "lambda": float(self.lambdas[g]),
              "w": [float(v) for v in w],
              "w_norm": float(np.linalg.norm(w)),
              "H": [float(v) for v in values["hessian"][:, e, g]],
              "H_scaled": [float(v) for v in values["hessian_scaled"][:, e, g]],
              "C": [float(v) for v in values["covariance"][:, e, g]],
              "omega": float(values["omega"][e, g]),
              "s": float(values["switch"][e, g]),
              "gamma": float(values["gamma"][e, g]),
              "entropy": float(prior_lib.entropy(max(values["gamma"][e, g], 1e-300))),
              "kept": bool(values["kept"][e, g] > 0.5),
              "pruned_at": int(values["pruned_at"][e, g]),
          })
    return {
        "schema_version": POSTERIOR_SCHEMA_VERSION,
        "updates": int(self.prior.updates.numpy()),
        "threshold": self.prune_threshold,
        "gate_init": self.backend.gate_init,
        "dependency": cfg.search.dependency,
        "init": cfg.search.init,
        "hessian": {
            "method": cfg.search.hessian,
            "batches": cfg.search.hessian_batches,
            "batch_size": self.batch_size,
            "convention": (
                "H is the Hessian diagonal of the cross-entropy summed over "
                "the examples of one batch (BN in inference mode), averaged "
                "over `batches` batches; the prior uses H_scaled = H / lambda "
                "(eq. 17)"),
        },
        "gate_layout": (
            "gate 'all' is the edge gate w_all (Sec. 4.2); lists hold one "
            "value per cell of the type; w are the effective gates that "
            "entered the last update (0 when masked); pruned_at is the "
            "update that pruned the group (0: kept)"),
        "groups": groups,
        "warnings": list(self.warnings),
    }

  def posterior_arrays(self) -> Dict[str, Dict[str, np.ndarray]]:
    """{cell type: {"gamma", "omega", "switch", "kept": (E, G); "w",
    "hessian", "hessian_scaled", "covariance": (n, E, G)}} (numpy), what a
    family's derive may rank ops by."""
    arrays = {}
    for t in self.prior.cell_types:
      arrays[t] = {name: getattr(self.prior, name)[t].numpy() for name in (
          "gamma", "omega", "switch", "kept", "covariance", "hessian",
          "hessian_scaled")}
      arrays[t]["w"] = self.prior.gates[t].numpy()
    return arrays

  def genotype(self):
    """The genotype of the kept masks, of the family of --search_space."""
    cfg = self.config
    metadata = {
        "lambda_child": cfg.search.lambda_child,
        "lambda_origin": cfg.search.effective_lambda_origin,
        "seed": cfg.runtime.seed, "hessian": cfg.search.hessian,
        "hessian_batches": cfg.search.hessian_batches,
        "dependency": cfg.search.dependency, "init": cfg.search.init,
        "iterations": int(self.prior.updates.numpy()),
        "prune_threshold": self.prune_threshold,
        "dataset": cfg.data.dataset, "search_space": cfg.supernet.search_space,
        **self.backend.metadata(),
    }
    return self.backend.derive(self.prior.kept_masks(), self.posterior_arrays(),
                               metadata)

  def _write_outputs(self):
    posterior_path = os.path.join(self.model_dir, "posterior.json")
    atomic_write_text(posterior_path,
                      json.dumps(self.posterior_dict(), indent=2, sort_keys=True))
    genotype = self.genotype()
    genotype.save(os.path.join(self.model_dir, "genotype.json"))
    cells = os.path.join(self.model_dir, "cells")
    with output_errors(cells):  # A family's pictures may be plain files.
      self.backend.write_pictures(genotype, cells)
    return genotype

  # --- driver ---------------------------------------------------------------
  def run(self) -> SearchResult:
    self._restore()
    paths = (os.path.join(self.model_dir, "genotype.json"),
             os.path.join(self.model_dir, "posterior.json"))
    writer = EventWriter(os.path.join(self.model_dir, "tensorboard"))
    iterations = self.config.search.iterations
    while not bool(self.state.finished.numpy()):
      phase = int(self.state.phase.numpy())
      if phase in (WARMUP, SEARCH):
        self._run_training_phase(phase, writer)
      else:
        self._run_update_phase(writer)
      next_phase = (phase + 1) % len(PHASES)
      if next_phase == WARMUP:
        self.state.iteration.assign_add(1)
        if int(self.state.iteration.numpy()) >= iterations:
          self.state.finished.assign(True)
      self.state.phase.assign(next_phase)
      self.state.step.assign(0)
      self._save()
      self.preemption.check(self._save, f"the {PHASES[phase]} phase")
    writer.flush()
    accuracy = self.evaluate()
    ops = diagnostics.op_counts(self.backend, self.prior.kept_masks())
    self.warnings = tuple(diagnostics.search_warnings(
        self.config, accuracy, self.dataset.num_classes, ops))
    for warning in self.warnings:
      logging.warning("search result: %s", warning)
    genotype = self._write_outputs()
    logging.info("search finished: genotype in %s (test accuracy of the "
                 "pruned supernet %.4f; kept ops %s)", paths[0], accuracy,
                 ", ".join(f"{t} {c['kept']}/{c['total']}" for t, c in ops.items()))
    return SearchResult(self.model_dir, genotype, paths[0], paths[1], accuracy,
                        self.accuracy_before_update, ops, self.warnings)
