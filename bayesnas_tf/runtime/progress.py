"""Progress of a training phase: a bar on a terminal, plain log lines elsewhere.

A Keras progress bar redraws itself with carriage returns and colour codes;
in a batch job (stdout to a file, a cluster log, CI) that turns the log into
megabytes of redraws. So the bar is shown only when stdout is an interactive
terminal and `--progress` is on; otherwise one plain absl log line is written
every `log_every` steps and at the end of the phase, with the step, the mean
metrics since the previous line, images/s and the ETA:

  search 1/1 search: step 40/135 (30%), loss 1.2345, acc 0.5625,
      penalty 0.0456, 812 images/s, ETA 0:00:12

The search loop, the retrain/transfer trainer and the compressor all report
through `PhaseProgress`, so every mode logs the same way.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Dict, Optional, Tuple

from absl import logging


def stdout_is_terminal() -> bool:
  """Whether stdout is an interactive terminal (a bar can redraw in place)."""
  try:
    return sys.stdout.isatty()
  except (AttributeError, ValueError):  # Replaced or closed streams.
    return False


def _format_value(value: float) -> str:
  return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


class PhaseProgress:
  """Reports the steps of one phase (an epoch, a warm-up, a Hessian pass).

  Args:
    label: what runs, e.g. "iteration 1/2, search"; starts every log line.
    total: the steps of the phase.
    start: the step the phase (re)starts at, 0 unless resumed.
    batch_size: examples per step, for images/s (None: not shown).
    progress: the `--progress` setting; a bar is drawn only when it is on
      AND stdout is a terminal.
    log_every: steps between plain log lines when no bar is drawn (0: only
      the line at the end of the phase).
    unit: what a step is called in the bar ("step", "batch").
  """

  def __init__(self, label: str, total: int, *, start: int = 0,
               batch_size: Optional[int] = None, progress: bool = True,
               log_every: int = 50, unit: str = "step"):
    if total < 0 or start < 0 or log_every < 0:
      raise ValueError(
          f"`total`, `start` and `log_every` must be >= 0. Received: "
          f"total={total}, start={start}, log_every={log_every}.")
    self.label = label
    self.total = total
    self.batch_size = batch_size
    self.log_every = log_every
    self.bar = None
    if progress and stdout_is_terminal():
      import keras  # pylint: disable=import-outside-toplevel
      self.bar = keras.utils.Progbar(total, unit_name=unit)
    self._phase_start_step = start
    self._phase_start_time = time.monotonic()
    self._window_step = start
    self._window_time = self._phase_start_time
    # {metric: (sum, count)} since the last line, and over the phase.
    self._window: Dict[str, Tuple[float, int]] = {}
    self._phase: Dict[str, Tuple[float, int]] = {}
    self._step = start
    self.lines = 0  # Plain log lines written (for tests).

  def update(self, step: int, **metrics: float) -> None:
    """`step` steps of the phase are done; `metrics` are this step's values."""
    self._step = step
    for name, value in metrics.items():
      for store in (self._window, self._phase):
        total, count = store.get(name, (0.0, 0))
        store[name] = (total + float(value), count + 1)
    if self.bar is not None:
      self.bar.update(step, [(name, float(v)) for name, v in metrics.items()])
      return
    if step == self._phase_start_step + 1:
      # The first step of a phase includes tracing the step function: the
      # speed and ETA are measured from its end.
      self._window_step, self._window_time = step, time.monotonic()
    if self.log_every and step % self.log_every == 0 and step < self.total:
      self._log_line(f"step {step}/{self.total} ({100 * step // max(self.total, 1)}%)",
                     self._window, self._window_step, self._window_time,
                     with_eta=True)
      self._window = {}
      self._window_step = step
      self._window_time = time.monotonic()

  def end(self, **extra: float) -> None:
    """The line at the end of the phase: means over the phase, its speed."""
    metrics = dict(self._phase)
    for name, value in extra.items():
      metrics[name] = (float(value), 1)
    done = self._step - self._phase_start_step
    seconds = time.monotonic() - self._phase_start_time
    self._log_line(f"done, {done} step(s) in {seconds:.1f} s", metrics,
                   self._phase_start_step, self._phase_start_time,
                   with_eta=False)

  def _log_line(self, head: str, metrics, since_step: int, since_time: float,
                with_eta: bool) -> None:
    parts = [f"{self.label}: {head}"]
    parts += [f"{name} {_format_value(total / count)}"
              for name, (total, count) in metrics.items() if count]
    steps = self._step - since_step
    seconds = time.monotonic() - since_time
    if steps > 0 and seconds > 0:
      if self.batch_size:
        parts.append(f"{steps * self.batch_size / seconds:.0f} images/s")
      if with_eta:
        remaining = (self.total - self._step) * seconds / steps
        parts.append(f"ETA {datetime.timedelta(seconds=round(remaining))}")
    logging.info("%s", ", ".join(parts))
    self.lines += 1


def for_runtime(runtime, label: str, total: int, **kwargs) -> PhaseProgress:
  """A `PhaseProgress` with the `--progress` / `--log_every` of a
  `RuntimeConfig`."""
  return PhaseProgress(label, total, progress=runtime.progress,
                       log_every=runtime.log_every, **kwargs)
