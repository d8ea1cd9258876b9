"""--mode=search: the BayesNAS search of the supernet of --search_space."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

from absl import logging

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.modes.common import prepare_runtime
from bayesnas_tf.runtime import run_dir
from bayesnas_tf.search.benchmark_table import BenchmarkTable
from bayesnas_tf.spaces import registry


def search_summary(config: ExperimentConfig) -> Dict[str, int]:
  """Builds the supernet without data and counts its parameters."""
  image_shape, num_classes = data_lib.dataset_metadata(config.data.dataset)
  backend = registry.get_family(config.supernet.search_space).search_backend(
      config)
  return backend.summary(backend.build_network(num_classes, image_shape))


def run_search(config: ExperimentConfig, flags_text: str = ""):
  """--mode=search: the whole BayesNAS search; returns a `SearchResult`."""
  from bayesnas_tf.search import search_loop  # pylint: disable=g-import-not-at-top
  run_dir.check_model_dir(config)
  table = _benchmark_table(config)
  strategy = prepare_runtime(config)
  dataset = data_lib.load_dataset(config.data.dataset, config.data.data_dir,
                                  config.data.download)
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  run_dir.write_run_files(config, flags_text)
  result = search.run()
  if table is None:
    return result
  family = registry.get_family(config.supernet.search_space)
  return dataclasses.replace(result, benchmark=lookup_benchmark(
      table, family.benchmark_key(result.genotype)))


def _benchmark_table(config: ExperimentConfig) -> Optional[BenchmarkTable]:
  """--benchmark_table, read before any work (a missing or malformed table
  is one line), or None."""
  path = config.search.benchmark_table
  if not path:
    return None
  space = config.supernet.search_space
  if registry.get_family(space).benchmark is None:
    with_tables = [s for f in registry.families() if f.benchmark
                   for s in f.space_names]
    raise ConfigError(
        f"--benchmark_table looks up the cells of a space with a benchmark "
        f"({', '.join(with_tables)}); --search_space={space} has none")
  return BenchmarkTable.load(path)


def lookup_benchmark(table: BenchmarkTable, key: str) -> Dict[str, object]:
  """The table's entry for the found cell, logged. A cell the table lacks
  is one warning line and {"table", "error"}: the search's own outputs are
  already written."""
  try:
    entry = table.lookup(key)
  except ConfigError as error:
    logging.warning("benchmark lookup: %s", error)
    return {"table": table.path, "error": str(error)}
  logging.info("benchmark: %s has %s %.2f in %s, percentile %.2f (rank %d of "
               "%d; best %.2f)", key, entry["column"], entry["accuracy"],
               table.path, entry["percentile"], entry["rank"], entry["cells"],
               entry["best"])
  return entry
