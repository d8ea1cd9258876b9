"""Training a derived network: --mode=retrain (CIFAR) and --mode=transfer
(ImageNet), DESIGN.md 7 and ALGORITHM.md 5.

A custom loop with the same tf.distribute structure as the search: the model
and optimizer live under `strategy.scope()`, steps go through
`strategy.run`, the loss is scaled by the global batch. SGD with momentum,
a per-epoch learning-rate schedule (cosine, or x0.97 per epoch for
ImageNet), weight decay on all weights, global-norm gradient clipping, label
smoothing, the drop-path probability ramped 0 -> drop_prob over the epochs,
and an optional auxiliary head. Every epoch is evaluated; checkpoints hold
the weights, the optimizer and the position (epoch, step), and the data of
an epoch is a pure function of (seed, epoch), so a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Dict, Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import TrainingDivergedError
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.nn import fused_sgd
from bayesnas_tf.runtime import checkpointing
from bayesnas_tf.runtime import distribute
from bayesnas_tf.runtime import precision
from bayesnas_tf.runtime import preemption
from bayesnas_tf.runtime import progress
from bayesnas_tf.runtime.checkpointing import restore_latest
from bayesnas_tf.runtime.checkpointing import variables_by_path
from bayesnas_tf.runtime.event_writer import EventWriter


@dataclasses.dataclass(frozen=True)
class TrainResult:
  model_dir: str
  test_accuracy: float
  test_top5: Optional[float]
  epochs: int
  metrics_path: str
  # The SavedModel version written at the end (modes.run_training), if any.
  export_path: Optional[str] = None


class TrainState(tf.Module):
  def __init__(self):
    super().__init__(name="train_state")
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False)


def learning_rate_at(config, epoch: int) -> float:
  """Per-epoch schedule: cosine to 0 (DARTS), x lr_decay per epoch, or constant."""
  train = config.train
  if train.lr_schedule == "cosine":
    return 0.5 * train.learning_rate * (1.0 + math.cos(math.pi * epoch / train.epochs))
  if train.lr_schedule == "exponential":
    return train.learning_rate * train.lr_decay ** epoch
  return train.learning_rate


def drop_prob_at(config, epoch: int) -> float:
  """The official ramp: p = drop_prob * epoch / epochs (ALGORITHM.md 9.1)."""
  return config.train.drop_prob * epoch / config.train.epochs


class Trainer:
  """Trains `model` on `data` (an ArrayTrainingData or StreamingDataset)."""

  def __init__(self, config: ExperimentConfig, model: keras.Model, data,
               strategy: tf.distribute.Strategy):
    self.config = config
    self.model = model
    self.data = data
    self.strategy = strategy
    self.model_dir = config.runtime.model_dir
    self.batch_size = config.data.batch_size
    self.steps_per_epoch = distribute.steps_per_epoch(
        self.batch_size, data.num_train, strategy)
    train = config.train
    with strategy.scope():
      self.optimizer = fused_sgd.MomentumSGD(
          learning_rate=train.learning_rate, momentum=train.momentum,
          global_clipnorm=train.grad_clip or None, name="sgd")
      self.optimizer.build(model.trainable_variables)
      self.state = TrainState()
      # float16 compute: dynamic loss scaling (precision.py).
      self.loss_scale = precision.make_loss_scale(config.runtime.dtype_policy)
    extra = {} if self.loss_scale is None else {"loss_scale": self.loss_scale}
    self.checkpoint = tf.train.Checkpoint(
        model=variables_by_path(model), optimizer=self.optimizer, state=self.state,
        **extra)
    self.manager = checkpointing.make_manager(
        self.checkpoint, os.path.join(self.model_dir, "checkpoints"),
        config.runtime.keep_checkpoints)
    self.preemption = preemption.Watcher(strategy)
    self.train_step = self._make_train_step()
    self.eval_step = self._make_eval_step()

  # --- steps --------------------------------------------------------------
  def _make_train_step(self):
    model, strategy, train = self.model, self.strategy, self.config.train
    variables = model.trainable_variables
    global_batch = self.batch_size
    num_classes = self.data.num_classes

    def cross_entropy(labels, logits):
      targets = tf.one_hot(labels, num_classes)
      if train.label_smoothing:
        targets = targets * (1 - train.label_smoothing) + (
            train.label_smoothing / num_classes)
      return tf.nn.softmax_cross_entropy_with_logits(targets, logits)

    def replica_step(images, labels):
      with tf.GradientTape() as tape:
        logits, aux_logits = model(images, training=True, return_auxiliary=True)
        logits = tf.cast(logits, tf.float32)
        per_example = cross_entropy(labels, logits)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        if aux_logits is not None:
          loss += train.auxiliary_weight * tf.nn.compute_average_loss(
              cross_entropy(labels, tf.cast(aux_logits, tf.float32)),
              global_batch_size=global_batch)
      # Coupled weight decay on every weight (PyTorch/DARTS semantics), then
      # clipping of the all-reduced gradient (Keras clips each replica's
      # own before it all-reduces; distribute.clip_summed_gradients).
      if self.loss_scale is None:
        grads = distribute.add_weight_decay(
            tape.gradient(loss, variables), variables, train.weight_decay)
        grads = distribute.clip_summed_gradients(grads, train.grad_clip)
        self.optimizer.apply_gradients(zip(grads, variables))
      else:
        scale = self.loss_scale.scale_value
        grads = distribute.add_weight_decay(
            self.loss_scale.gradient(tape, loss, variables), variables,
            train.weight_decay, scale)
        grads = distribute.clip_summed_gradients(
            grads, train.grad_clip and train.grad_clip * scale)
        self.loss_scale.apply([(self.optimizer, grads, variables)])
      correct = tf.reduce_sum(tf.cast(tf.equal(
          tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32))
      return tf.reduce_sum(per_example), correct

    @tf.function(jit_compile=self.config.runtime.jit_compile or None)
    def step(batch):
      images, labels = batch
      loss_sum, correct = strategy.run(replica_step, args=(images, labels))
      reduce = lambda t: strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)
      return reduce(loss_sum) / global_batch, reduce(correct) / global_batch

    return step

  def _make_eval_step(self):
    model, strategy = self.model, self.strategy
    k = min(5, self.data.num_classes)

    def replica_step(images, labels):
      logits = tf.cast(model(images, training=False), tf.float32)
      # Padding examples (label -1, distribute.distribute_dataset) never count.
      valid = labels >= 0
      safe_labels = tf.maximum(labels, 0)
      loss = tf.reduce_sum(tf.where(valid, tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=safe_labels, logits=logits), 0.0))
      top1 = tf.reduce_sum(tf.cast(tf.equal(
          tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32))
      topk = tf.reduce_sum(tf.cast(
          valid & tf.nn.in_top_k(safe_labels, logits, k), tf.float32))
      return loss, top1, topk, tf.reduce_sum(tf.cast(valid, tf.float32))

    @tf.function(jit_compile=self.config.runtime.jit_compile or None)
    def step(batch):
      values = strategy.run(replica_step, args=batch)
      return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
              for v in values]

    return step

  def evaluate(self) -> Dict[str, float]:
    totals = np.zeros(4)
    dataset = self.data.test(batch_size=self.config.data.eval_batch_size)
    for batch in distribute.distribute_dataset(
        self.strategy, dataset, self.config.data.eval_batch_size, pad=True):
      totals += np.array([float(v) for v in self.eval_step(batch)])
    count = max(totals[3], 1.0)
    result = {"loss": totals[0] / count, "accuracy": totals[1] / count,
              "examples": int(totals[3])}
    if self.data.num_classes > 5:
      result["top5"] = totals[2] / count
    return result

  # --- loop ---------------------------------------------------------------
  def _save(self):
    checkpointing.save(self.manager, int(self.state.global_step.numpy()))

  def run(self) -> TrainResult:
    latest = restore_latest(self.checkpoint, self.manager)
    if latest:
      logging.info("resumed from %s: epoch %d, step %d", latest,
                   int(self.state.epoch.numpy()) + 1, int(self.state.step.numpy()))
    train = self.config.train
    writer = EventWriter(os.path.join(self.model_dir, "tensorboard"))
    metrics = {}
    while int(self.state.epoch.numpy()) < train.epochs:
      epoch = int(self.state.epoch.numpy())
      start = int(self.state.step.numpy())
      lr = learning_rate_at(self.config, epoch)
      self.optimizer.learning_rate.assign(lr)
      self.model.set_drop_prob(drop_prob_at(self.config, epoch))
      logging.info("epoch %d/%d: lr %.5f, drop prob %.3f", epoch + 1, train.epochs,
                   lr, drop_prob_at(self.config, epoch))
      dataset = self.data.train(batch_size=self.batch_size,
                                seed=self.config.runtime.seed, epoch=epoch,
                                skip_batches=start)
      bar = progress.for_runtime(
          self.config.runtime, f"epoch {epoch + 1}/{train.epochs}",
          self.steps_per_epoch, start=start, batch_size=self.batch_size)
      step = start
      for batch in distribute.distribute_dataset(self.strategy, dataset,
                                                 self.batch_size):
        loss, accuracy = (float(v) for v in self.train_step(batch))
        if not math.isfinite(loss):
          raise TrainingDivergedError(
              f"the loss became {'NaN' if math.isnan(loss) else 'infinite'} in "
              f"epoch {epoch + 1}, step {step + 1}; lower --learning_rate or "
              f"raise --grad_clip and start a new --model_dir ({self.model_dir} "
              "keeps its last good checkpoint)")
        step += 1
        self.state.step.assign(step)
        self.state.global_step.assign_add(1)
        bar.update(step, loss=loss, acc=accuracy)
        global_step = int(self.state.global_step.numpy())
        if global_step % 10 == 0:
          with writer.as_default(step=global_step):
            tf.summary.scalar("train/loss", loss)
            tf.summary.scalar("train/accuracy", accuracy)
        if step % self.config.runtime.checkpoint_every == 0 and step < self.steps_per_epoch:
          self._save()
        self.preemption.check(self._save, f"epoch {epoch + 1}, step {step}")
      bar.end()
      metrics = self.evaluate()
      logging.info("epoch %d/%d: test accuracy %.4f%s", epoch + 1, train.epochs,
                   metrics["accuracy"],
                   f", top-5 {metrics['top5']:.4f}" if "top5" in metrics else "")
      with writer.as_default(step=int(self.state.global_step.numpy())):
        tf.summary.scalar("eval/accuracy", metrics["accuracy"])
        tf.summary.scalar("eval/loss", metrics["loss"])
        tf.summary.scalar("train/learning_rate", lr)
        if "top5" in metrics:
          tf.summary.scalar("eval/top5", metrics["top5"])
      self.state.epoch.assign_add(1)
      self.state.step.assign(0)
      self._save()
      self.preemption.check(self._save, f"epoch {epoch + 1}")
    writer.flush()
    if not metrics:  # Finished earlier: evaluate the restored weights.
      metrics = self.evaluate()
    metrics_path = os.path.join(self.model_dir, "metrics.json")
    atomic_write_text(metrics_path, json.dumps(
        dict(metrics, epochs=train.epochs, dataset=self.data.name), indent=2,
        sort_keys=True))
    return TrainResult(self.model_dir, metrics["accuracy"], metrics.get("top5"),
                       train.epochs, metrics_path)
