"""Preemption: SIGTERM ends the current step, writes a checkpoint and stops.

Cloud schedulers announce a preemption or maintenance with SIGTERM and kill
the process a grace period later. While a mode runs (`sigterm_handler`), the
signal only sets a flag; the training loops call `Watcher.check` at every
point where their state is consistent (after a step and its bookkeeping,
between Hessian batches, at phase ends), which then saves the loop's
checkpoint and raises `Preempted`; the command line (cli.py) prints one
line and exits with PREEMPTED_EXIT_CODE. Because data order and augmentation
are pure functions of the position, the same command resumes exactly where
the run stopped.

Under MultiWorkerMirroredStrategy the workers must stop after the same step,
or one would wait forever in an all-reduce: TensorFlow's
PreemptionCheckpointHandler agrees on that step through the coordination
service, whichever worker got the signal. It polls our flag (so SIGTERM
works the same on every platform), calls the loop's save and then our exit,
which raises `Preempted`. Non-chief workers save into their scratch folder
(cluster.py), the chief into --model_dir.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
from typing import Callable, Iterator, Optional

from absl import logging
import tensorflow as tf

from bayesnas_tf.errors import Preempted

_SIGTERM = threading.Event()
# Whether sigterm_handler is active (reinstall() then takes SIGTERM back).
_ACTIVE = threading.Event()


def _on_sigterm(signum, frame) -> None:
  del signum, frame
  _SIGTERM.set()


@contextlib.contextmanager
def sigterm_handler() -> Iterator[None]:
  """Turns SIGTERM into a request the loops honour, for the block's duration.

  Only the main thread may install signal handlers; elsewhere (a library
  caller's worker thread) SIGTERM keeps its default action.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _SIGTERM.clear()
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  _ACTIVE.set()
  try:
    yield
  finally:
    _ACTIVE.clear()
    signal.signal(signal.SIGTERM, previous)


def reinstall() -> None:
  """Takes SIGTERM back after TensorFlow took it.

  Starting a multi-worker (coordination service) or TPU runtime installs
  TensorFlow's own C++ SIGTERM notifier, which replaces ours and never tells
  Python; the strategy constructors call this right after.
  """
  if _ACTIVE.is_set() and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


def request() -> None:
  """Asks the running loop to checkpoint and stop (what SIGTERM does)."""
  _SIGTERM.set()


def requested() -> bool:
  return _SIGTERM.is_set()


class Watcher:
  """Checkpoints and raises `Preempted` at the first safe point after SIGTERM.

  Every worker must call `check` at the same points (the loops are the same
  on all of them): under multi-worker each call is one "step" of
  PreemptionCheckpointHandler.
  """

  def __init__(self, strategy: tf.distribute.Strategy):
    self.strategy = strategy
    self._handler = None
    self._scratch: Optional[tempfile.TemporaryDirectory] = None
    self._save: Callable[[], None] = lambda: None
    self._where = ""

  def check(self, save: Callable[[], None], where: str) -> None:
    """Call at a consistent state; `save` writes the loop's checkpoint.

    `where` names the position for the message (e.g. "epoch 2, step 13").
    """
    if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      if _SIGTERM.is_set():
        save()
        self._exit_with(where)
      return
    if self._handler is None:
      self._handler = self._make_handler()
    self._save, self._where = save, where
    self._handler.save_checkpoint_if_preempted()

  def _make_handler(self):
    # The handler wants a checkpoint manager to restore from and to count
    # its calls in; the loops restore (from the chief's checkpoints) and
    # save themselves, so it gets an empty one of its own, identical on
    # every worker, and saves through `save_fn`.
    self._scratch = tempfile.TemporaryDirectory(prefix="bayesnas_preemption_")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(),
                                         self._scratch.name, max_to_keep=1)
    config = tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=_SIGTERM.is_set,
        exit_fn=lambda: self._exit_with(self._where),
        grace_period=0,
        save_fn=lambda *args, **kwargs: self._save())
    logging.info("preemption: PreemptionCheckpointHandler watches for SIGTERM")
    return tf.distribute.experimental.PreemptionCheckpointHandler(
        self.strategy.cluster_resolver, manager, termination_config=config)

  def _exit_with(self, where: str) -> None:
    if self._scratch is not None:
      self._scratch.cleanup()
    raise Preempted(f"SIGTERM: stopped after {where} and saved a checkpoint; "
                    "run the same command to resume")
