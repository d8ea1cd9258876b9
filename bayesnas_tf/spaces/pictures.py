"""Rendering DOT pictures of cells as PNG, shared by every family.

DOT text needs nothing beyond the standard library, so every search writes
its cells' .dot files; PNGs need the optional `graphviz` Python package
(`pip install bayesnas_tf[viz]`) and the `dot` program, and are skipped
with one log line without them. TensorFlow-free.
"""

from __future__ import annotations

import shutil


def png_skip_reason() -> str | None:
  """Why PNGs cannot be rendered here, or None when they can."""
  try:
    import graphviz  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return ("the graphviz Python package is not installed "
            "(pip install bayesnas_tf[viz])")
  if shutil.which("dot") is None:
    return ("the Graphviz `dot` program is not on PATH "
            "(install Graphviz, e.g. apt-get install graphviz)")
  return None


def render_png(dot_text: str) -> bytes:
  """PNG bytes of DOT text, rendered by Graphviz (see `png_skip_reason`)."""
  import graphviz  # pylint: disable=import-outside-toplevel
  return graphviz.Source(dot_text).pipe(format="png")
