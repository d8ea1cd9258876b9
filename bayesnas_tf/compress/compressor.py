"""--mode=compress: Bayesian structured pruning of a CNN (the paper's
Algorithm 3, ALGORITHM.md 7; DESIGN.md 7).

  0. pretrain the named architecture (unless --base_model gives a trained one);
  1. T rounds of: train with CE + the re-weighted group lasso (eq. 21) ->
     Hessian diagonal of the kernels (exact GGN) -> update of eq. 17-20 per
     group -> prune groups with gamma <= threshold (units removed by masks)
     -> re-estimate the BN moving statistics of the pruned network;
  2. physical slimming: a new, smaller Keras model without the removed
     filters/channels (equal to the masked model, checked on a batch);
  3. fine-tune the slim model, report, save and export it.

The same tf.distribute structure as the search and the trainer: variables
under `strategy.scope()`, steps through `strategy.run`, the loss scaled by
the global batch, Hessian sums reduced across replicas. A checkpoint after
pretraining and after every round holds the weights, the prior, the masks
and the position, so a killed run resumes at its last finished round.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Dict, List, Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.compress import cnn_zoo
from bayesnas_tf.compress import structure
from bayesnas_tf.compress import weight_diag_backprop
from bayesnas_tf.compress.group_prior import WeightGroupPrior
from bayesnas_tf.compress.weight_hessian import kernel_hessian_diagonal
from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.errors import TrainingDivergedError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.io_utils import output_errors
from bayesnas_tf.io_utils import remove_quietly
from bayesnas_tf.nn import bn_statistics
from bayesnas_tf.runtime import checkpointing
from bayesnas_tf.runtime import distribute
from bayesnas_tf.runtime import precision
from bayesnas_tf.runtime import preemption
from bayesnas_tf.runtime import progress
from bayesnas_tf.runtime.checkpointing import restore_latest
from bayesnas_tf.runtime.checkpointing import variables_by_path
from bayesnas_tf.runtime.event_writer import EventWriter

REPORT_FILE = "compression.json"
BASE_MODEL_FILE = "base_model.keras"
SLIM_MODEL_FILE = "slim_model.keras"
ROUNDS_FILE = "rounds.json"
# Epoch streams of the data pipeline, so every phase sees its own order.
_HESSIAN_STREAM = 1_000_000
_RECALIBRATION_STREAM = 2_000_000
# Batches whose statistics replace the BN moving averages after a pruning
# step (a cumulative mean over them, not an exponential one).
BN_RECALIBRATION_BATCHES = 50


@dataclasses.dataclass(frozen=True)
class CompressResult:
  model_dir: str
  report: dict
  report_path: str
  slim_model: keras.Model
  # The SavedModel version written at the end (modes.run_compress), if any.
  export_path: Optional[str] = None


class CompressState(tf.Module):
  def __init__(self):
    super().__init__(name="compress_state")
    self.pretrained = tf.Variable(False, trainable=False)
    self.rounds_done = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.accuracy_before = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    # Where the current training phase (pretraining, a round's epochs,
    # fine-tuning) is, so a preempted run resumes mid-epoch.
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False)


def save_keras_atomic(model: keras.Model, path: str) -> None:
  """model.save to a temporary .keras file, then rename over `path`; a
  failure removes the temporary file and raises OutputWriteError."""
  tmp = os.path.join(os.path.dirname(path), ".tmp_" + os.path.basename(path))
  try:
    with output_errors(path):
      model.save(tmp)
      os.replace(tmp, path)
  finally:
    remove_quietly(tmp)


def load_base_model(path: str, image_shape, num_classes: int) -> keras.Model:
  if not os.path.exists(path):
    raise ConfigError(f"--base_model={path} does not exist; pass a trained .keras file")
  try:
    model = keras.saving.load_model(path, compile=False)
  except Exception as error:  # pylint: disable=broad-except
    message = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    raise ConfigError(f"--base_model={path} cannot be loaded as a Keras model "
                      f"({message})") from None
  if not isinstance(model, keras.Model) or len(model.inputs) != 1:
    raise ConfigError(f"--base_model={path} is not a single-input Keras model")
  want = tuple(int(d) for d in image_shape)
  got = tuple(model.inputs[0].shape[1:])
  if got != want:
    raise ConfigError(f"--base_model={path} takes images of shape {got}, the dataset "
                      f"has {want}; pass the dataset it was trained on")
  outputs = model.outputs[0].shape[-1]
  if outputs != num_classes:
    raise ConfigError(f"--base_model={path} has {outputs} outputs, the dataset "
                      f"{num_classes} classes")
  return model


class Compressor:
  """Runs the whole compression of one model on one dataset."""

  def __init__(self, config: ExperimentConfig, data, strategy: tf.distribute.Strategy):
    self.config = config
    self.cfg = config.compress
    self.data = data
    self.strategy = strategy
    self.model_dir = config.runtime.model_dir
    self.batch_size = config.data.batch_size
    self.steps_per_epoch = distribute.steps_per_epoch(
        self.batch_size, data.num_train, strategy)
    with strategy.scope():
      self.model = self._base_model()
      self.chain = structure.CNNChain(self.model)
      if self.cfg.hessian == "diag_backprop":
        weight_diag_backprop.check_supported(self.chain)  # before pretraining
      self.group_sets = self.chain.group_sets(self.cfg.groups)
      self.prior = WeightGroupPrior(self.group_sets)
      self.unit_masks = {p: tf.Variable(np.ones(self.chain.units(p), np.float32),
                                        trainable=False, name=f"unit_mask_{p}")
                         for p in self.chain.prunable}
      self.kernel_masks = {w: tf.Variable(np.ones(self.chain.kernel(w).shape, np.float32),
                                          trainable=False, name=f"kernel_mask_{w}")
                           for w in self.chain.weighted}
      self.state = CompressState()
      # One SGD for the base model's phases, its momentum cleared when a
      # phase starts (as a new optimizer's would be); checkpointed, so a
      # preempted phase resumes with it.
      self.optimizer = keras.optimizers.SGD(learning_rate=self.cfg.learning_rate,
                                            momentum=self.cfg.momentum)
      self.optimizer.build(self.model.trainable_variables)
      self.loss_scale = precision.make_loss_scale(config.runtime.dtype_policy)
    self.kernels = {w: self.chain.kernel(w) for w in self.chain.weighted}
    self.group_layers = sorted({s.layer_index for s in self.group_sets})
    self.checkpoint = tf.train.Checkpoint(
        model=variables_by_path(self.model), prior=self.prior, state=self.state,
        optimizer=self.optimizer,
        unit_masks={str(k): v for k, v in self.unit_masks.items()},
        kernel_masks={str(k): v for k, v in self.kernel_masks.items()})
    self.manager = checkpointing.make_manager(
        self.checkpoint, os.path.join(self.model_dir, "checkpoints"), 2)
    self.writer = EventWriter(os.path.join(self.model_dir, "tensorboard"))
    self._eval_steps: Dict[str, Callable] = {}
    self.preemption = preemption.Watcher(strategy)
    distribute.synchronize_batch_norm(self.model, strategy)

  def _base_model(self) -> keras.Model:
    with precision.policy_scope(self.config.runtime.dtype_policy):
      return self._load_or_build_base_model()

  def _load_or_build_base_model(self) -> keras.Model:
    if self.cfg.base_model:
      return load_base_model(self.cfg.base_model, self.data.image_shape,
                             self.data.num_classes)
    return cnn_zoo.build_architecture(self.cfg.architecture, self.data.image_shape,
                                      self.data.num_classes, self.cfg.vgg_width)

  # --- masked forward and steps ---------------------------------------------
  def group_tensors(self) -> Dict[int, tf.Tensor]:
    """The tensors the groups are cut from (read inside tapes: BN stacks
    are built from the variables each call)."""
    return {i: self.chain.group_tensor(i) for i in self.group_layers}

  def masked_forward(self, images, training: bool):
    return self.chain.forward(images, training=training, unit_masks=self.unit_masks)

  def _train_step_fn(self, forward: Callable, variables, optimizer,
                     penalty: Optional[Callable] = None,
                     masks: Optional[List[tuple]] = None):
    strategy = self.strategy
    global_batch = self.batch_size
    replicas = strategy.num_replicas_in_sync
    weight_decay = self.cfg.weight_decay

    def replica_step(images, labels):
      with tf.GradientTape() as tape:
        logits = tf.cast(forward(images, True), tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        group_lasso = tf.constant(0.0)
        if penalty is not None:
          group_lasso = tf.cast(penalty(), tf.float32)
          loss += group_lasso / replicas
      # Coupled weight decay: grad += wd * w (distribute.add_weight_decay).
      if self.loss_scale is None:
        grads = distribute.add_weight_decay(
            tape.gradient(loss, variables), variables, weight_decay)
        optimizer.apply_gradients(zip(grads, variables))
      else:  # float16 compute (precision.py)
        grads = distribute.add_weight_decay(
            self.loss_scale.gradient(tape, loss, variables), variables,
            weight_decay, self.loss_scale.scale_value)
        self.loss_scale.apply([(optimizer, grads, variables)])
      correct = tf.reduce_sum(tf.cast(tf.equal(
          tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32))
      return tf.reduce_sum(per_example), correct, group_lasso

    @tf.function(jit_compile=self.config.runtime.jit_compile or None)
    def step(batch):
      images, labels = batch
      ce, correct, group_lasso = strategy.run(replica_step, args=(images, labels))
      reduce = lambda t: strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)
      if masks:  # Removed weights stay exactly zero (cross-replica assign).
        for kernel, mask in masks:
          kernel.assign(kernel * mask)
      return (reduce(ce) / global_batch, reduce(correct) / global_batch,
              reduce(group_lasso) / replicas)

    return step

  def _eval_step_fn(self, forward: Callable):
    strategy = self.strategy

    def replica_step(images, labels):
      logits = tf.cast(forward(images, False), tf.float32)
      correct = tf.reduce_sum(tf.cast(tf.equal(
          tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32))
      # Padding examples (label -1, distribute.distribute_dataset) never count.
      return correct, tf.reduce_sum(tf.cast(labels >= 0, tf.float32))

    # The last batch is smaller.
    @tf.function(reduce_retracing=True,
                 jit_compile=self.config.runtime.jit_compile or None)
    def step(batch):
      values = strategy.run(replica_step, args=batch)
      return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in values]

    return step

  def evaluate(self, forward: Callable, key: str) -> float:
    """Test accuracy of `forward`; one traced step per `key`."""
    if key not in self._eval_steps:
      self._eval_steps[key] = self._eval_step_fn(forward)
    step = self._eval_steps[key]
    correct = count = 0.0
    dataset = self.data.test(batch_size=self.config.data.eval_batch_size)
    for batch in distribute.distribute_dataset(
        self.strategy, dataset, self.config.data.eval_batch_size, pad=True):
      c, n = step(batch)
      correct += float(c)
      count += float(n)
    return correct / max(count, 1.0)

  def _train_epochs(self, label: str, step_fn, epochs: int, first_stream: int,
                    optimizer, lr_at: Callable[[int], float],
                    save: Callable[[], None]) -> None:
    """The phase's epochs from the position in `state` on; `save` writes
    the checkpoint that a preemption after any step resumes from."""
    for epoch in range(int(self.state.epoch.numpy()), epochs):
      start = int(self.state.step.numpy())
      optimizer.learning_rate.assign(lr_at(epoch))
      dataset = self.data.train(batch_size=self.batch_size, seed=self.config.runtime.seed,
                                epoch=first_stream + epoch, skip_batches=start)
      bar = progress.for_runtime(
          self.config.runtime, f"{label} epoch {epoch + 1}/{epochs}",
          self.steps_per_epoch, start=start, batch_size=self.batch_size)
      logging.info("%s epoch %d/%d, lr %.5f", label, epoch + 1, epochs, lr_at(epoch))
      for index, batch in enumerate(distribute.distribute_dataset(
          self.strategy, dataset, self.batch_size), start=start):
        ce, accuracy, lasso = (float(v) for v in step_fn(batch))
        if not math.isfinite(ce + lasso):
          raise TrainingDivergedError(
              f"the loss became {ce + lasso} during {label}; lower --learning_rate "
              f"or --lambda_group and start a new --model_dir ({self.model_dir} "
              "keeps its last good checkpoint)")
        self.state.global_step.assign_add(1)
        self.state.step.assign(index + 1)
        if lasso:
          bar.update(index + 1, loss=ce, acc=accuracy, lasso=lasso)
        else:
          bar.update(index + 1, loss=ce, acc=accuracy)
        global_step = int(self.state.global_step.numpy())
        if global_step % 20 == 0:
          with self.writer.as_default(step=global_step):
            tf.summary.scalar(f"{label}/cross_entropy", ce)
            tf.summary.scalar(f"{label}/accuracy", accuracy)
            if lasso:
              tf.summary.scalar(f"{label}/group_lasso", lasso)
        self.preemption.check(save, f"{label} epoch {epoch + 1}, step {index + 1}")
      bar.end()
      self.state.epoch.assign(epoch + 1)
      self.state.step.assign(0)

  def _save(self) -> None:
    """A checkpoint inside a phase (rounds end with checkpoint `round`)."""
    checkpointing.save(self.manager, int(self.state.global_step.numpy()))

  def _end_phase(self) -> None:
    self.state.epoch.assign(0)
    self.state.step.assign(0)

  def _base_optimizer(self) -> keras.optimizers.Optimizer:
    """The base model's SGD: momentum cleared when a phase starts, kept when
    a preempted phase resumes."""
    if int(self.state.epoch.numpy()) == 0 and int(self.state.step.numpy()) == 0:
      for momentum in self.optimizer.momentums:
        momentum.assign(tf.zeros_like(momentum))
    return self.optimizer

  def _optimizer(self, variables) -> keras.optimizers.Optimizer:
    with self.strategy.scope():
      optimizer = keras.optimizers.SGD(learning_rate=self.cfg.learning_rate,
                                       momentum=self.cfg.momentum)
      optimizer.build(variables)
    return optimizer

  def _cosine(self, epochs: int, lr: float) -> Callable[[int], float]:
    return lambda epoch: 0.5 * lr * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))

  # --- phases ---------------------------------------------------------------
  def _pretrain(self) -> None:
    cfg = self.cfg
    if self.cfg.base_model is None and cfg.pretrain_epochs:
      variables = self.model.trainable_variables
      optimizer = self._base_optimizer()
      step = self._train_step_fn(lambda x, t: self.model(x, training=t), variables, optimizer)
      self._train_epochs("pretrain", step, cfg.pretrain_epochs, 0, optimizer,
                         self._cosine(cfg.pretrain_epochs,
                                      cfg.pretrain_learning_rate or cfg.learning_rate),
                         self._save)
      save_keras_atomic(self.model, os.path.join(self.model_dir, BASE_MODEL_FILE))
    accuracy = self.evaluate(lambda x, t: self.model(x, training=t), "base")
    logging.info("base model: test accuracy %.4f", accuracy)
    self.state.accuracy_before.assign(accuracy)
    self.state.pretrained.assign(True)
    self._end_phase()
    checkpointing.save(self.manager, 0)
    self.preemption.check(self._save, "pretraining")

  def hessians(self, round_index: int) -> Dict[int, tf.Tensor]:
    """Kernel (and BN) Hessian diagonals, batch sums averaged over
    hessian_batches."""
    cfg = self.cfg
    strategy = self.strategy
    tapped = sorted(set(self.chain.weighted) | set(self.chain.bn_after.values()))

    @tf.function(jit_compile=self.config.runtime.jit_compile or None)
    def step(images, seed):
      def replica_fn(images):
        # The curvature of a mixed-precision model is its float32 network's.
        with precision.float32_policy(self.model):
          h = kernel_hessian_diagonal(self.chain, images, cfg.hessian, seed,
                                      self.unit_masks)
        return [h[i] for i in tapped]
      per_replica = strategy.run(replica_fn, args=(images,))
      return [strategy.reduce(tf.distribute.ReduceOp.SUM, h, axis=None) for h in per_replica]

    dataset = self.data.train(batch_size=self.batch_size, seed=self.config.runtime.seed,
                              epoch=_HESSIAN_STREAM + round_index).take(cfg.hessian_batches)
    totals, batches = None, 0
    for batch_index, (images, _) in enumerate(
        distribute.distribute_dataset(self.strategy, dataset, self.batch_size)):
      seed = tf.constant([self.config.runtime.seed, 1000 * round_index + batch_index], tf.int64)
      h = step(images, seed)
      totals = h if totals is None else [a + b for a, b in zip(totals, h)]
      batches += 1
      # The round's epochs are done and nothing else has changed yet: a
      # checkpoint here resumes at this Hessian.
      self.preemption.check(self._save, f"round {round_index + 1}, Hessian "
                            f"batch {batches}")
    return {i: tf.cast(h, tf.float64) / batches for i, h in zip(tapped, totals)}

  def _apply_pruning(self) -> Dict[str, int]:
    """Prior kept flags -> unit and kernel masks; removed weights zeroed."""
    kept = self.prior.kept_arrays()
    unit_masks = {}
    for p in self.chain.prunable:
      sets = [s for s in self.group_sets if s.unit_layer == p]
      keep = np.ones(self.chain.units(p), bool)
      for s in sets:
        keep &= kept[s.name]
      scores = np.min([self.prior.gamma[s.name].numpy() for s in sets], axis=0) if sets \
          else np.ones(len(keep))
      keep = structure.keep_at_least_one(self.chain.layers[p].name, keep, scores)
      # A removed unit takes all its groups with it (one unit, one fate).
      for s in sets:
        self.prior.set_kept(s.name, keep)
      unit_masks[p] = keep.astype(np.float32)
      self.unit_masks[p].assign(unit_masks[p])
    for s in self.group_sets:
      if s.kind == "shape":  # A kernel of only zeros would cut the network too.
        kept = self.prior.kept_arrays()[s.name]
        # Only groups reading an input channel that is still there count.
        available = np.ones(s.num_groups, bool)
        if s.layer_index in self.chain.producer:
          inputs = unit_masks[self.chain.producer[s.layer_index]] > 0
          available = np.broadcast_to(inputs, s.kernel_shape[:-1]).ravel()
        scores = np.where(available, self.prior.gamma[s.name].numpy(), -np.inf)
        keep = structure.keep_at_least_one(
            f"{self.chain.layers[s.layer_index].name} (shape groups)",
            kept & available, scores)
        self.prior.set_kept(s.name, keep | kept)
    shape_masks = self.shape_masks()
    for w in self.chain.weighted:
      mask = self.chain.kernel_mask(w, unit_masks, shape_masks)
      self.kernel_masks[w].assign(mask)
      self.kernels[w].assign(self.kernels[w] * mask)
    for p, bn in self.chain.bn_after.items():
      for variable in (self.chain.layers[bn].gamma, self.chain.layers[bn].beta):
        variable.assign(variable * unit_masks[p])
    return {self.chain.layers[p].name: int(m.sum()) for p, m in unit_masks.items()}

  def shape_masks(self) -> Dict[int, np.ndarray]:
    kept = self.prior.kept_arrays()
    return {s.layer_index: s.unview(kept[s.name][:, np.newaxis].astype(np.float32)
                                    * np.ones((1, s.group_size), np.float32)).numpy()
            for s in self.group_sets if s.kind == "shape"}

  def recalibrate_batch_norm(self, round_index: int) -> None:
    """Re-estimates every BN's moving mean and variance under the masks.

    Removing units shifts the inputs of the next layer's BN, so the moving
    statistics collected before no longer match and the pruned network's
    inference-mode accuracy collapses though nothing it computes has lost
    its information. The statistics are recomputed as the plain average of
    BN_RECALIBRATION_BATCHES training batches, without any weight update
    (bn_statistics.py).
    """
    bns = [layer for layer in self.chain.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    batches = min(BN_RECALIBRATION_BATCHES, self.steps_per_epoch)
    dataset = self.data.train(batch_size=self.batch_size, seed=self.config.runtime.seed,
                              epoch=_RECALIBRATION_STREAM + round_index).take(batches)
    bn_statistics.MovingStatisticsEstimator(
        bns, lambda images: self.masked_forward(images, True), self.strategy)(
            distribute.distribute_dataset(self.strategy, dataset, self.batch_size))

  def _round(self, round_index: int, history: List[dict]) -> None:
    cfg = self.cfg
    variables = self.model.trainable_variables
    optimizer = self._base_optimizer()
    masks = [(self.kernels[w], self.kernel_masks[w]) for w in self.chain.weighted]
    for p, bn in self.chain.bn_after.items():
      layer = self.chain.layers[bn]
      masks += [(layer.gamma, self.unit_masks[p]), (layer.beta, self.unit_masks[p])]
    step = self._train_step_fn(
        self.masked_forward, variables, optimizer,
        penalty=lambda: self.prior.penalty(self.group_tensors(), cfg.lambda_group),
        masks=masks)
    first_stream = cfg.pretrain_epochs + round_index * cfg.epochs_per_iteration
    self._train_epochs(f"round{round_index + 1}", step, cfg.epochs_per_iteration,
                       first_stream, optimizer, lambda epoch: cfg.learning_rate,
                       self._save)
    logging.info("round %d/%d: %s Hessian over %d batch(es)", round_index + 1,
                 cfg.iterations, cfg.hessian, cfg.hessian_batches)
    hessians = self.hessians(round_index)
    results = self.prior.update(self.group_tensors(), hessians, cfg.lambda_group,
                                cfg.prune_threshold)
    kept_units = self._apply_pruning()
    self.recalibrate_batch_norm(round_index)
    accuracy = self.evaluate(self.masked_forward, "masked")
    with self.writer.as_default(step=int(self.state.global_step.numpy())):
      for name, result in results.items():
        tf.summary.histogram(f"prior/{name}/log10_gamma",
                             np.log10(np.maximum(result.gamma, 1e-30)))
        tf.summary.scalar(f"prior/{name}/kept_fraction", float(np.mean(result.kept)))
      tf.summary.scalar("eval/accuracy_masked", accuracy)
    params, macs = structure.count_params_and_macs(
        self.chain, {p: v.numpy() for p, v in self.unit_masks.items()}, self.shape_masks())
    logging.info("round %d/%d: kept units %s, %s params, %s MACs, test accuracy %.4f",
                 round_index + 1, cfg.iterations, kept_units, f"{params:,}",
                 f"{macs:,}", accuracy)
    history.append({
        "round": round_index + 1, "kept_units": kept_units, "params": params,
        "flops": macs, "accuracy": accuracy,
        "gamma_median": {name: float(np.median(r.gamma)) for name, r in results.items()},
    })
    atomic_write_text(os.path.join(self.model_dir, ROUNDS_FILE), json.dumps(history, indent=2))
    self.state.rounds_done.assign(round_index + 1)
    self._end_phase()
    checkpointing.save(self.manager, round_index + 1)
    self.preemption.check(self._save, f"round {round_index + 1}")

  def _finetune(self, slim: keras.Model) -> None:
    cfg = self.cfg
    if not cfg.finetune_epochs:
      return
    variables = slim.trainable_variables
    optimizer = self._optimizer(variables)
    # The slim model exists only from here on: fine-tuning has its own
    # checkpoint (written when preempted), with the position in `state`.
    checkpoint = tf.train.Checkpoint(model=variables_by_path(slim),
                                     optimizer=optimizer, state=self.state)
    manager = checkpointing.make_manager(
        checkpoint, os.path.join(self.model_dir, "checkpoints", "finetune"), 1)
    if restore_latest(checkpoint, manager):
      logging.info("resumed fine-tuning at epoch %d, step %d",
                   int(self.state.epoch.numpy()) + 1, int(self.state.step.numpy()))
    step = self._train_step_fn(lambda x, t: slim(x, training=t), variables, optimizer)
    first_stream = cfg.pretrain_epochs + cfg.iterations * cfg.epochs_per_iteration
    self._train_epochs("finetune", step, cfg.finetune_epochs, first_stream, optimizer,
                       self._cosine(cfg.finetune_epochs, cfg.learning_rate),
                       lambda: checkpointing.save(
                           manager, int(self.state.global_step.numpy())))

  def _check_slim_equivalence(self, slim: keras.Model) -> float:
    images, _ = next(iter(self.data.test(batch_size=min(64, self.data.num_test))))
    masked = self.masked_forward(images, False).numpy()
    difference = float(np.max(np.abs(slim(images, training=False).numpy() - masked)))
    scale = float(np.max(np.abs(masked))) or 1.0
    if difference > 1e-3 * scale:
      raise RuntimeError(f"the slim model differs from the masked model by {difference}")
    return difference

  # --- the whole run --------------------------------------------------------
  def run(self) -> CompressResult:
    cfg = self.cfg
    latest = restore_latest(self.checkpoint, self.manager)
    if latest:
      logging.info("resumed from %s after %d round(s)", latest,
                   int(self.state.rounds_done.numpy()))
    history_path = os.path.join(self.model_dir, ROUNDS_FILE)
    history = []
    if latest and os.path.exists(history_path):
      with open(history_path) as f:
        history = json.load(f)[:int(self.state.rounds_done.numpy())]
    if not bool(self.state.pretrained.numpy()):
      self._pretrain()
    chain = self.chain
    params_before, flops_before = structure.count_params_and_macs(chain)
    if int(self.state.rounds_done.numpy()) == 0 and not (
        int(self.state.epoch.numpy()) or int(self.state.step.numpy())):
      # Before round 1 starts (a preempted round 1 restored its scales).
      self.prior.set_scales(self.group_tensors())
    for round_index in range(int(self.state.rounds_done.numpy()), cfg.iterations):
      self._round(round_index, history)
    unit_masks = {p: v.numpy() for p, v in self.unit_masks.items()}
    shape_masks = self.shape_masks()
    accuracy_pruned = self.evaluate(self.masked_forward, "masked")
    with self.strategy.scope():  # Its variables are trained under the strategy.
      slim = structure.slim_model(chain, unit_masks, shape_masks)
    distribute.synchronize_batch_norm(slim, self.strategy)
    difference = self._check_slim_equivalence(slim)
    logging.info("slim model: max |logit difference| to the masked model %.2e", difference)
    self._finetune(slim)
    accuracy_finetuned = self.evaluate(lambda x, t: slim(x, training=t), "slim")
    params_after, flops_after = structure.count_params_and_macs(structure.CNNChain(slim))
    report = {
        "model": self.model.name,
        "base_model": cfg.base_model,
        "dataset": self.data.name,
        "groups": list(cfg.groups),
        "lambda_group": cfg.lambda_group,
        "prune_threshold": cfg.prune_threshold,
        "hessian": cfg.hessian,
        "iterations": cfg.iterations,
        "params_before": params_before,
        "params_after": params_after,
        "params_removed": 1.0 - params_after / params_before,
        "flops_before": flops_before,
        "flops_after": flops_after,
        "flops_removed": 1.0 - flops_after / flops_before,
        "accuracy_before": float(self.state.accuracy_before.numpy()),
        "accuracy_pruned": accuracy_pruned,
        "accuracy_finetuned": accuracy_finetuned,
        "slim_max_logit_difference": difference,
        "layers": layer_table(chain, unit_masks, shape_masks),
        "rounds": history,
    }
    report_path = os.path.join(self.model_dir, REPORT_FILE)
    atomic_write_text(report_path, json.dumps(report, indent=2))
    save_keras_atomic(slim, os.path.join(self.model_dir, SLIM_MODEL_FILE))
    self.writer.flush()
    return CompressResult(self.model_dir, report, report_path, slim)


def layer_table(chain: structure.CNNChain, unit_masks: Dict[int, np.ndarray],
                shape_masks: Dict[int, np.ndarray]) -> List[dict]:
  """Per weighted layer: kept/total output units and input channels, and
  kernel entries kept (shape-pruned entries counted as removed)."""
  rows = []
  for w in chain.weighted:
    kernel_shape = tuple(int(d) for d in chain.kernel(w).shape)
    total_in = kernel_shape[-2] if chain.is_conv(w) else kernel_shape[0]
    if w in chain.producer:
      p = chain.producer[w]
      kept_in = int(unit_masks[p].sum()) * (chain.flatten_spatial[p] if not chain.is_conv(w) else 1)
    else:
      kept_in = total_in
    out = unit_masks.get(w, np.ones(chain.units(w)))
    rows.append({
        "layer": chain.layers[w].name,
        "type": "conv" if chain.is_conv(w) else "dense",
        "units_kept": int(out.sum()), "units_total": chain.units(w),
        "inputs_kept": kept_in, "inputs_total": total_in,
        "weights_kept": int(chain.kernel_mask(w, unit_masks, shape_masks).sum()),
        "weights_total": int(np.prod(kernel_shape)),
    })
  return rows


def format_report(report: dict) -> str:
  """The printed table of a compression report."""
  lines = [f"{'layer':<14}{'type':<7}{'units kept':>14}{'inputs kept':>16}{'weights kept':>22}"]
  for row in report["layers"]:
    lines.append(
        f"{row['layer']:<14}{row['type']:<7}"
        f"{row['units_kept']:>7}/{row['units_total']:<6}"
        f"{row['inputs_kept']:>8}/{row['inputs_total']:<7}"
        f"{row['weights_kept']:>11,}/{row['weights_total']:<10,}")
  lines += [
      f"params_before: {report['params_before']}",
      f"params_after: {report['params_after']}  "
      f"({100 * report['params_removed']:.1f}% removed)",
      f"flops_before: {report['flops_before']}",
      f"flops_after: {report['flops_after']}  "
      f"({100 * report['flops_removed']:.1f}% removed)",
      f"accuracy_before: {report['accuracy_before']:.4f}",
      f"accuracy_pruned: {report['accuracy_pruned']:.4f}",
      f"accuracy_finetuned: {report['accuracy_finetuned']:.4f}",
  ]
  return "\n".join(lines)
