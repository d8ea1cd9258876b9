"""One module per `--mode`, dispatched from a table (STYLE.md 15).

What lives here: common.py (what every mode does first: devices, seeds,
threads, the strategy), search.py, train.py (retrain and transfer), export.py,
compress.py and study.py (searched against random cells, built from the
search and train modes); this file holds the table, `run`, `summary` and
`result_text`, and re-exports the helpers that scripts build with
(`prepare_runtime`, `build_child_network`, ...).

Each mode takes the frozen `ExperimentConfig` and returns what it produced.
Data flows one way: search -> genotype.json -> retrain/transfer ->
checkpoint -> SavedModel; each mode reads what an earlier one wrote and
never re-derives it.

What it may import: every package below it (config, runtime, data, the
search-space registry, search, compress, training); only api.py and cli.py
import it. A mode reaches a search-space family only through
`bayesnas_tf.spaces.registry`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator, Optional

from absl import logging

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import BayesNASError
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.errors import write_failure
from bayesnas_tf.modes import compress
from bayesnas_tf.modes import export
from bayesnas_tf.modes import search
from bayesnas_tf.modes import study
from bayesnas_tf.modes import train
from bayesnas_tf.modes.common import configure_graph_optimizer
from bayesnas_tf.modes.common import prepare_runtime
from bayesnas_tf.modes.train import build_child_network
from bayesnas_tf.modes.train import load_training_data
from bayesnas_tf.nn.init import count_params
from bayesnas_tf.runtime import cluster
from bayesnas_tf.runtime import preemption
from bayesnas_tf.runtime import results
from bayesnas_tf.runtime import run_lock

__all__ = [
    "MODES", "SUMMARIES", "run", "summary", "result_text",
    # The helpers that benchmarks and tests build with.
    "build_child_network", "configure_graph_optimizer", "count_params",
    "load_training_data", "prepare_runtime",
]
MODES: Dict[str, Callable] = {
    "search": search.run_search, "retrain": train.run_training,
    "transfer": train.run_training, "compress": compress.run_compress,
    "export": export.run_export, "study": study.run_study,
}
SUMMARIES: Dict[str, Callable] = {
    "search": search.search_summary, "retrain": train.train_summary,
    "transfer": train.train_summary, "compress": compress.compress_summary,
}
# What the command line prints after a mode finishes (the others: nothing).
RESULT_TEXTS: Dict[str, Callable] = {
    "compress": compress.result_text, "study": study.result_text,
}


def result_text(config: ExperimentConfig, result) -> Optional[str]:
  """What the command line prints after a mode finishes (None: nothing)."""
  text_fn = RESULT_TEXTS.get(config.mode)
  return None if text_fn is None else text_fn(result)


def run(config: ExperimentConfig, flags_text: str = ""):
  try:
    mode_fn = MODES[config.mode]
  except KeyError:
    raise ConfigError(
        f"unknown --mode={config.mode}; valid modes are {', '.join(MODES)}") from None
  logging.info("mode %s, model_dir %s", config.mode, config.runtime.model_dir)
  start = time.monotonic()
  # SIGTERM checkpoints and stops the run (preemption.py); a worker other
  # than the chief writes into a scratch folder of its own (cluster.py);
  # one run at a time per model_dir, whose lock the chief holds (an export
  # only reads a finished run: run_lock.py).
  with preemption.sigterm_handler(), cluster.worker_outputs(config) as config, \
      run_lock.hold(config.runtime.model_dir,
                    enabled=config.mode != "export" and cluster.is_chief()), \
      _write_failures():
    result = mode_fn(config, flags_text)
    # The final figures for scripts (results.py), after the mode succeeded.
    path = results.write_result(config, result, time.monotonic() - start)
  logging.info("%s finished in %.0f s; figures in %s", config.mode,
               time.monotonic() - start, path)
  return result


@contextlib.contextmanager
def _write_failures() -> Iterator[None]:
  """A write failure that no writer reported as OutputWriteError (a full
  disk met by a library's own file) still ends as one, with its exit code;
  every other error passes unchanged."""
  try:
    yield
  except BayesNASError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    failure = write_failure(error)
    if failure is None:
      raise
    raise failure from error


def summary(config: ExperimentConfig) -> Dict[str, int]:
  if config.mode not in SUMMARIES:
    raise ConfigError(f"--summary_only is not available for --mode={config.mode}")
  return SUMMARIES[config.mode](config)
