"""The checks every configuration section runs; each names its flag."""

from __future__ import annotations

import math

from bayesnas_tf.errors import ConfigError


def check_positive(name: str, value, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not ok or (isinstance(value, float) and not math.isfinite(value)):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"--{name} must be {bound}; received {name}={value!r}")


def check_momentum(name: str, value) -> None:
  if not 0 <= value < 1:
    raise ConfigError(f"--{name} must be in [0, 1); received {name}={value!r}")


def check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(
        f"--{name} must be one of {', '.join(choices)}; received {name}={value!r}")
