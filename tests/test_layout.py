"""The package layout (issue 19): the import graph has no cycle and follows
the package order of the README's "Layout" section.

Every import counts, at module level or inside a function: a lazy import
still ties two modules together (../shared/tools/import_graph.py counts them
the same way; this test reads the source with `ast` and needs nothing else).
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set

from conftest import ROOT

PACKAGE = "bayesnas_tf"

# A module may import modules of its own level or lower ones, never a higher
# one ("" is the package's own __init__, which loads the API on first use).
LEVELS = {
    "errors": 0, "io_utils": 0, "nn": 1, "layers": 2, "spaces": 3,
    "config": 4, "runtime": 5, "data": 6, "search": 7, "compress": 8,
    "training": 8, "modes": 9, "api": 10, "cli": 10, "testing": 10, "": 10,
}
# What a search-space family may not import: it takes configuration
# sections as arguments and reads their attributes.
NOT_FOR_FAMILIES = ("config", "runtime", "data", "search", "compress",
                    "training", "modes", "api", "cli", "testing")
ROOT_MODULES_MAX = 12
# The modules of spaces/ that every family shares (the rest are families).
SHARED_SPACE_MODULES = ("", "base", "registry", "pictures")


def _modules() -> Dict[str, pathlib.Path]:
  """{dotted module name: path} of every module of the package."""
  modules = {}
  for path in sorted((ROOT / PACKAGE).rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    modules[".".join(parts)] = path
  return modules


def _imports(modules: Dict[str, pathlib.Path]) -> Dict[str, Set[str]]:
  """{module: the package's modules it imports anywhere in its source}."""
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets += [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: from the package, up level - 1 parents.
          parent = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parent + ([base] if base else []))
        targets += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
      while target and target not in modules:  # `from pkg import name`
        target = target.rpartition(".")[0]
      # A module's own package (its __init__) is not an edge.
      if target and target != name and not name.startswith(target + "."):
        found.add(target)
    graph[name] = found
  return graph


GRAPH = _imports(_modules())


def _part(module: str, index: int) -> str:
  """The `index`-th component below the package ("" when there is none)."""
  parts = module.split(".")[1:]
  return parts[index] if len(parts) > index else ""


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
  """One import cycle of `graph` ([] when there is none)."""
  state: Dict[str, int] = {}  # 1: on the current path, 2: done.
  path: List[str] = []

  def visit(module: str) -> List[str]:
    state[module] = 1
    path.append(module)
    for target in sorted(graph[module]):
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state:
        found = visit(target)
        if found:
          return found
    state[module] = 2
    path.pop()
    return []

  for module in sorted(graph):
    if module not in state:
      found = visit(module)
      if found:
        return found
  return []


def test_no_import_cycle():
  assert _cycle(GRAPH) == []


def test_a_lower_package_never_imports_a_higher_one():
  upward = [f"{src} -> {dst}" for src, targets in GRAPH.items()
            for dst in targets if LEVELS[_part(src, 0)] < LEVELS[_part(dst, 0)]]
  assert upward == []


def test_the_algorithm_packages_import_no_mode():
  found = [f"{src} -> {dst}" for src, targets in GRAPH.items()
           for dst in targets if _part(src, 0) in ("search", "compress", "training")
           and _part(dst, 0) in ("modes", "cli", "api")]
  assert found == []


def test_the_search_reaches_families_only_through_the_registry():
  found = [f"{src} -> {dst}" for src, targets in GRAPH.items()
           for dst in targets if _part(src, 0) == "search"
           and _part(dst, 0) == "spaces"
           and _part(dst, 1) not in SHARED_SPACE_MODULES]
  assert found == []


def test_families_import_no_configuration_runtime_search_or_modes():
  found = []
  for src, targets in GRAPH.items():
    family = _part(src, 1)
    if _part(src, 0) != "spaces" or family in SHARED_SPACE_MODULES:
      continue
    for dst in targets:
      other_family = (_part(dst, 0) == "spaces" and
                      _part(dst, 1) not in SHARED_SPACE_MODULES + (family,))
      if _part(dst, 0) in NOT_FOR_FAMILIES or other_family:
        found.append(f"{src} -> {dst}")
  assert found == []


def test_the_package_root_keeps_at_most_a_dozen_modules():
  root = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py"))
  assert len(root) <= ROOT_MODULES_MAX, root
