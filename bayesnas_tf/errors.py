"""Errors a user can fix; `main.py` turns each into one line and a non-zero exit.

Every message names what was wrong and what to pass instead, so the command
line never shows a raw traceback for bad input.
"""


class BayesNASError(Exception):
  """Base class for errors caused by input the user can correct."""


class ConfigError(BayesNASError, ValueError):
  """A flag or configuration value is invalid or inconsistent."""


class DataError(BayesNASError):
  """A dataset cannot be found, loaded or has the wrong shape or labels."""


class GenotypeError(BayesNASError, ValueError):
  """A genotype (JSON file or built-in name) is missing or malformed."""


class CheckpointMismatchError(BayesNASError):
  """`--model_dir` holds state written by a different configuration."""


class TrainingDivergedError(BayesNASError):
  """The loss became NaN or infinite."""
