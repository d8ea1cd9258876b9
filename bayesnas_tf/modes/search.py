"""--mode=search: the BayesNAS search of the supernet of --search_space."""

from __future__ import annotations

from typing import Dict

from bayesnas_tf.config import ExperimentConfig
from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.modes.common import prepare_runtime
from bayesnas_tf.runtime import run_dir
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
  strategy = prepare_runtime(config)
  dataset = data_lib.load_dataset(config.data.dataset, config.data.data_dir,
                                  config.data.download)
  search = search_loop.BayesNASSearch(config, dataset, strategy)
  run_dir.write_run_files(config, flags_text)
  return search.run()
