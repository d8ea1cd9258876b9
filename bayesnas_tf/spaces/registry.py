"""`--search_space` names -> search-space families; genotypes of any family.

TensorFlow-free: main.py and the configs check `--search_space` and
`--genotype` with it before TensorFlow loads.

A family is registered by one line in `FAMILY_MODULES`: the module that
defines its `SearchSpaceFamily` object as `FAMILY` (spaces/base.py). The
modules are imported on first use, in this order, which is also the order in
which `resolve_genotype` tries the families' built-in names and string forms.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Dict, List, Mapping, Tuple

from bayesnas_tf.errors import ConfigError, GenotypeError
from bayesnas_tf.io_utils import parse_json
from bayesnas_tf.spaces.base import SearchSpaceFamily

# One line per family.
FAMILY_MODULES: Tuple[str, ...] = (
    "bayesnas_tf.spaces.dag.family",
    "bayesnas_tf.spaces.tree.family",
    "bayesnas_tf.spaces.nb201.family",
)

GENOTYPE_FILENAME = "genotype.json"
# What a genotype.json without a "kind" field holds (the DAG cells, which
# were written before the field existed).
DEFAULT_KIND = "cells"

_FAMILIES: List[SearchSpaceFamily] = []


def families() -> Tuple[SearchSpaceFamily, ...]:
  """Every registered family, in `FAMILY_MODULES` order."""
  if not _FAMILIES:
    loaded = [importlib.import_module(m).FAMILY for m in FAMILY_MODULES]
    names = [n for f in loaded for n in f.space_names]
    if len(set(names)) != len(names):
      raise ImportError(f"two families claim one search space: {names}")
    _FAMILIES.extend(loaded)
  return tuple(_FAMILIES)


def family_names() -> Tuple[str, ...]:
  return tuple(f.name for f in families())


def space_names() -> Tuple[str, ...]:
  """Every valid `--search_space` value."""
  return tuple(n for f in families() for n in f.space_names)


def get_family(search_space: str) -> SearchSpaceFamily:
  """The family that owns `search_space`; ConfigError names the valid ones."""
  for family in families():
    if search_space in family.space_names:
      return family
  raise ConfigError(
      f"unknown search space {search_space!r}; valid search spaces are "
      f"{', '.join(space_names())}")


def family_of(genotype: Any) -> SearchSpaceFamily:
  """The family of a genotype object (its `family` attribute)."""
  for family in families():
    if getattr(genotype, "family", None) == family.name:
      return family
  raise GenotypeError(f"{type(genotype).__name__} is not a genotype of any "
                      f"search-space family ({', '.join(family_names())})")


def builtin_genotypes() -> Dict[str, Any]:
  """{name: genotype} of every family's released networks."""
  return {name: genotype for family in families()
          for name, genotype in family.builtin_genotypes().items()}


def genotype_from_dict(data: Any) -> Any:
  """A genotype of the family whose "kind" the JSON object carries."""
  kind = data.get("kind", DEFAULT_KIND) if isinstance(data, Mapping) else DEFAULT_KIND
  for family in families():
    if kind == family.genotype_kind:
      return family.genotype_from_dict(data)
  kinds = ", ".join(repr(f.genotype_kind) for f in families())
  raise GenotypeError(f"unknown genotype kind {kind!r}; the kinds are {kinds}")


def load_genotype(path: str | os.PathLike) -> Any:
  """Reads a genotype.json of any family; errors name the file."""
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    # The built-in names of the first family (that of the default search
    # space), as this message has always listed them.
    raise GenotypeError(
        f"genotype file {path} does not exist; pass a built-in name "
        f"({', '.join(families()[0].builtin_genotypes())}) or a path to "
        f"{GENOTYPE_FILENAME}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise GenotypeError(
        f"cannot read genotype file {path} ({e}); check the path and its "
        f"permissions") from None
  data = parse_json(text, f"genotype file {path}")
  try:
    return genotype_from_dict(data)
  except GenotypeError as e:
    raise GenotypeError(f"genotype file {path}: {e}") from None


def resolve_genotype(text: str | os.PathLike) -> Any:
  """`--genotype`: a built-in name of any family, a genotype.json path or a
  directory holding one, or a family's string form (tried in this order)."""
  if isinstance(text, str):
    builtins = builtin_genotypes()
    if text in builtins:
      return builtins[text]
  path = os.fspath(text)
  if os.path.isdir(path):
    return load_genotype(os.path.join(path, GENOTYPE_FILENAME))
  if isinstance(text, str) and not os.path.exists(path):
    for family in families():
      parsed = family.parse_genotype_text(text)
      if parsed is not None:
        return parsed
  return load_genotype(path)
