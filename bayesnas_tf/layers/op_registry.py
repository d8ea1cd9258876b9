"""Op sets: the candidate ops that `MixedOp` and `SwitchedEdge` build, by name.

An op set is a name, the op names in gate order and a factory
`factory(op_name, channels, stride, name, dtype) -> keras.layers.Layer`. A
search-space family registers its set once, when the module that defines the
ops is imported:

    register_op_set("darts", PRIMITIVES, make_op, check=check_primitives)

`MixedOp(..., op_set="darts")` then builds its candidates through it. The
built-in sets are imported on first use (`_OP_SET_MODULES`), so a `.keras`
file holding a `SwitchedEdge` loads without importing its family first.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

from bayesnas_tf.errors import ConfigError

OpFactory = Callable[..., object]
NameCheck = Callable[[Sequence[str]], Tuple[str, ...]]

# Op set -> the module that registers it when imported.
_OP_SET_MODULES: Dict[str, str] = {
    "darts": "bayesnas_tf.spaces.dag.ops",
    "nb201": "bayesnas_tf.spaces.nb201.ops",
    "nb201_noaffine": "bayesnas_tf.spaces.nb201.ops",
}


class OpSet(NamedTuple):
  """A registered op set (see the module doc)."""
  name: str
  op_names: Tuple[str, ...]
  factory: OpFactory
  check: NameCheck


_OP_SETS: Dict[str, OpSet] = {}


def _check_names(op_names: Tuple[str, ...], names: Sequence[str]) -> Tuple[str, ...]:
  names = tuple(names)
  unknown = [n for n in names if n not in op_names]
  if unknown or not names or len(set(names)) != len(names):
    raise ConfigError(
        f"ops must be distinct names of {', '.join(op_names)}; received "
        f"{', '.join(names) or 'none'}")
  return names


def register_op_set(name: str, op_names: Sequence[str], factory: OpFactory,
                    check: Optional[NameCheck] = None) -> OpSet:
  """Registers an op set; `check(names)` validates a choice of its ops
  (default: distinct names of `op_names`, at least one)."""
  if name in _OP_SETS:
    raise ValueError(f"op set {name!r} is already registered")
  op_names = tuple(op_names)
  op_set = OpSet(name, op_names, factory,
                 check or (lambda names: _check_names(op_names, names)))
  _OP_SETS[name] = op_set
  return op_set


def get_op_set(name: str) -> OpSet:
  """The registered op set `name`, importing its module on first use."""
  if name not in _OP_SETS and name in _OP_SET_MODULES:
    importlib.import_module(_OP_SET_MODULES[name])
  try:
    return _OP_SETS[name]
  except KeyError:
    known = sorted(set(_OP_SETS) | set(_OP_SET_MODULES))
    raise ValueError(f"unknown op set {name!r}; the op sets are "
                     f"{', '.join(known)}") from None
