"""Errors a user can fix; the command line (cli.py) turns each into one line
and a non-zero exit.

Every message names what was wrong and what to pass instead, so the command
line never shows a raw traceback for bad input.

Exit codes (README "When things go wrong"): 1 for input or a run directory
the user must correct (`BayesNASError.exit_code`), OUTPUT_WRITE_EXIT_CODE
for an output that could not be written, PREEMPTED_EXIT_CODE after SIGTERM
and 130 after Ctrl-C. Only 1 means that the same command will fail again
as it is; after the others it resumes.
"""

import errno
import os
import re
from typing import Optional

# An output could not be written (no space, permission, read-only or
# vanished folder): BSD's EX_IOERR, so a scheduler can tell "make room and
# restart" from bad input (1), preemption (42) and Ctrl-C (130).
OUTPUT_WRITE_EXIT_CODE = 74


class BayesNASError(Exception):
  """Base class for errors caused by input the user can correct."""

  exit_code = 1


class ConfigError(BayesNASError, ValueError):
  """A flag or configuration value is invalid or inconsistent."""


class DataError(BayesNASError):
  """A dataset cannot be found, loaded or has the wrong shape or labels."""


class GenotypeError(BayesNASError, ValueError):
  """A genotype (JSON file or built-in name) is missing or malformed."""


class CheckpointMismatchError(BayesNASError):
  """`--model_dir` holds state written by a different configuration."""


class CheckpointUnreadableError(BayesNASError):
  """`--model_dir` holds checkpoints, and none of them can be read."""


class ModelDirInUseError(BayesNASError):
  """Another live run holds the lock of `--model_dir` (runtime/run_lock.py)."""


class OutputWriteError(BayesNASError):
  """An output (checkpoint, JSON, picture, SavedModel, TensorBoard event)
  could not be written.

  The message is `cannot write PATH: REASON; HINT`, REASON being the
  operating system's words ("No space left on device"). Every writer
  leaves the previous version of its file, and the last good checkpoint,
  in place, so the same command resumes once the cause is fixed.
  """

  exit_code = OUTPUT_WRITE_EXIT_CODE

  def __init__(self, path: str, reason: str, hint: Optional[str] = None):
    self.path = path
    self.reason = reason
    super().__init__(f"cannot write {path}: {reason}; " + (hint or RESUME_HINT))


RESUME_HINT = ("make room or fix the folder, then run the same command to "
               "resume from the last checkpoint")

# The errnos that only a write produces; a stray OSError or TensorFlow error
# with one of them is a write failure wherever it comes from (modes.run).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
_WRITE_REASONS = tuple(os.strerror(e) for e in WRITE_ERRNOS)


def failure_reason(error: BaseException) -> str:
  """The operating system's reason in `error` ("No space left on device").

  An OSError carries it as `strerror`. A TensorFlow error names the file,
  then the reason after "; " (`...ckpt-3_temp/part-00000...; No space left
  on device [Op:SaveV2]`), inside a function-node prefix when the op ran
  in a tf.function.
  """
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  text = str(getattr(error, "message", None) or error).strip()
  text = text.splitlines()[0] if text else type(error).__name__
  text = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text)
  text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
  return (text.rsplit("; ", 1)[-1] or text)[:200]


def write_failure(error: BaseException) -> Optional[OutputWriteError]:
  """`error` as an OutputWriteError when it can only come from a write (a
  full disk, a file too large, a read-only file system), else None."""
  if isinstance(error, OSError):
    if error.errno in WRITE_ERRNOS:
      return OutputWriteError(error.filename or "a file", failure_reason(error))
    return None
  text = str(getattr(error, "message", "") or "")
  for reason in _WRITE_REASONS:
    if reason in text:
      path = failure_path(text)
      return OutputWriteError(path or "a file", reason)
  return None


def failure_path(text: str) -> Optional[str]:
  """The path a TensorFlow error message names before its reason, if any."""
  text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text.strip())
  head = text.rsplit("; ", 1)[0] if "; " in text else ""
  match = re.search(r"(\S*/\S+)$", head)
  return match.group(1) if match else None


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
