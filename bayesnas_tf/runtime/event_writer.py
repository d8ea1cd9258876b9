"""TensorBoard event files whose write failures are one OutputWriteError.

`tf.summary` buffers events and writes them when a `with
writer.as_default():` block ends (it flushes), so a full disk surfaces
there as a ResourceExhaustedError with a three-line message. `EventWriter`
has the same `as_default(step=...)` and `flush()` and turns such an error
into `OutputWriteError` naming the TensorBoard folder and the reason, like
every other output of a run (errors.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import tensorflow as tf

from bayesnas_tf.io_utils import output_errors


class EventWriter:
  """`tf.summary.create_file_writer(logdir)`, failing as OutputWriteError."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = os.fspath(logdir)
    with output_errors(self.logdir):
      self._writer = tf.summary.create_file_writer(self.logdir)

  @contextlib.contextmanager
  def as_default(self, step: Optional[int] = None) -> Iterator[None]:
    with output_errors(self.logdir):
      with self._writer.as_default(step=step):
        yield

  def flush(self) -> None:
    with output_errors(self.logdir):
      self._writer.flush()
