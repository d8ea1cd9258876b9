"""Errors a user can fix; the command line (cli.py) turns each into one line
and a non-zero exit.

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


class ClusterError(BayesNASError):
  """The cluster (TF_CONFIG, --worker_hosts, --tpu) is invalid or unreachable."""


# The exit code of a run stopped by SIGTERM after writing its checkpoint.
# TensorFlow's PreemptionCheckpointHandler exits with 42 by default outside
# GCP, so a scheduler's restart-on-42 rule covers both; it differs from 1
# (bad input) and 130 (Ctrl-C).
PREEMPTED_EXIT_CODE = 42


class Preempted(Exception):
  """SIGTERM: the run saved a checkpoint and stops; the same command resumes.

  Not a `BayesNASError`: nothing is wrong with the input, and the exit code
  (PREEMPTED_EXIT_CODE) tells a scheduler to start the command again.
  """
