"""Keras callbacks for training a derived network with `model.fit`.

`DropPathSchedule` ramps the drop-path probability of a `ChildNetwork` as
our own trainer does (train.py `drop_prob_at`): p = final_prob * epoch /
epochs at the start of each epoch. The probability is a variable the
network reads in every call, so changing it needs no re-tracing.
"""

from __future__ import annotations

import keras


class DropPathSchedule(keras.callbacks.Callback):
  """Sets `model.set_drop_prob(final_prob * epoch / epochs)` per epoch.

  Args:
    final_prob: the probability the ramp heads for (DARTS / paper: 0.2).
    epochs: the epochs of the ramp (usually those passed to `fit`).
  """

  def __init__(self, final_prob: float, epochs: int):
    super().__init__()
    if not 0.0 <= final_prob < 1.0:
      raise ValueError(
          f"`final_prob` must be in [0, 1). Received: final_prob={final_prob!r}.")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
      raise ValueError(f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}.")
    self.final_prob = float(final_prob)
    self.epochs = epochs

  def probability(self, epoch: int) -> float:
    return self.final_prob * min(epoch, self.epochs) / self.epochs

  def on_epoch_begin(self, epoch, logs=None):
    self.model.set_drop_prob(self.probability(epoch))
