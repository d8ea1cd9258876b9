"""Frozen configuration dataclasses; the command line (main.py) and the
Python API build them from options.

What lives here: one module per concern, each with its sections' dataclasses
and the constants their flags choose from: data.py (`DataConfig`), search.py
(`SupernetConfig`, `SearchConfig`, `PRUNE_THRESHOLD`), train.py
(`TrainConfig`, `ExportConfig`), compress.py (`CompressConfig`), runtime.py
(`RuntimeConfig`), study.py (`StudyConfig`), experiment.py
(`ExperimentConfig`, the sections of each mode, the defaults of each mode
and dataset, `config_from_values`); checks.py holds the checks they share.
Every public name is re-exported here (`config_lib.ExperimentConfig`).

What it may import: `bayesnas_tf.errors` and the search-space registry
(`bayesnas_tf.spaces.registry`, TensorFlow-free), which checks
`--search_space` and the settings of its family; no TensorFlow.
"""

from bayesnas_tf.config.compress import COMPRESS_ARCHITECTURES
from bayesnas_tf.config.compress import COMPRESS_HESSIAN_METHODS
from bayesnas_tf.config.compress import CompressConfig
from bayesnas_tf.config.compress import GROUPINGS
from bayesnas_tf.config.data import DataConfig
from bayesnas_tf.config.experiment import CONFIG_SCHEMA_VERSION
from bayesnas_tf.config.experiment import DATASET_DEFAULTS
from bayesnas_tf.config.experiment import ExperimentConfig
from bayesnas_tf.config.experiment import MODES
from bayesnas_tf.config.experiment import MODE_SECTIONS
from bayesnas_tf.config.experiment import SECTIONS
from bayesnas_tf.config.experiment import config_from_values
from bayesnas_tf.config.experiment import default_config
from bayesnas_tf.config.experiment import option_names
from bayesnas_tf.config.runtime import DTYPE_POLICIES
from bayesnas_tf.config.runtime import RuntimeConfig
from bayesnas_tf.config.runtime import STRATEGIES
from bayesnas_tf.config.search import DEPENDENCIES
from bayesnas_tf.config.search import HESSIAN_METHODS
from bayesnas_tf.config.search import INITS
from bayesnas_tf.config.search import OP_SCORES
from bayesnas_tf.config.search import PRUNE_THRESHOLD
from bayesnas_tf.config.search import SearchConfig
from bayesnas_tf.config.search import SupernetConfig
from bayesnas_tf.config.study import StudyConfig
from bayesnas_tf.config.train import DROP_PATHS
from bayesnas_tf.config.train import ExportConfig
from bayesnas_tf.config.train import LR_SCHEDULES
from bayesnas_tf.config.train import TrainConfig
from bayesnas_tf.config.train import VARIANTS
from bayesnas_tf.errors import ConfigError

__all__ = [
    "COMPRESS_ARCHITECTURES", "COMPRESS_HESSIAN_METHODS", "CONFIG_SCHEMA_VERSION",
    "DATASET_DEFAULTS", "DEPENDENCIES", "DROP_PATHS", "DTYPE_POLICIES",
    "GROUPINGS", "HESSIAN_METHODS", "INITS", "LR_SCHEDULES", "MODES", "OP_SCORES",
    "MODE_SECTIONS", "PRUNE_THRESHOLD", "SECTIONS", "STRATEGIES", "VARIANTS",
    "CompressConfig", "ConfigError", "DataConfig", "ExperimentConfig",
    "ExportConfig", "RuntimeConfig", "SearchConfig", "StudyConfig",
    "SupernetConfig", "TrainConfig", "config_from_values", "default_config",
    "option_names",
]
