"""The primitives of the DAG cells, without TensorFlow: flags, configs and
genotypes are checked against these before TensorFlow loads (a mistyped
flag is answered in under a second).

`ops.OPS` builds the layers under exactly these names, in this order (it
checks it when imported).
"""

from __future__ import annotations

from typing import Sequence, Tuple

from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces.base import check_known

# DARTS-style primitives (ALGORITHM.md 1.1), in gate order; names follow the
# genotype notation of ALGORITHM.md 6.
PRIMITIVES: Tuple[str, ...] = ("sep3", "sep5", "dil3", "dil5", "max", "avg", "id")


def check_primitives(names: Sequence[str]) -> Tuple[str, ...]:
  """Validates a list of primitive names against the registry."""
  names = check_known(names, PRIMITIVES, "primitive")
  if not names:
    raise ConfigError(
        f"at least one primitive is needed; valid primitives are "
        f"{', '.join(PRIMITIVES)}")
  if len(set(names)) != len(names):
    raise ConfigError(f"primitives are listed twice: {', '.join(names)}")
  return names
