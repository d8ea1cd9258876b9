"""Pictures of derived cells: Graphviz DOT text, and PNGs when Graphviz is there.

The DOT text needs nothing beyond the standard library, so a search always
leaves `normal.dot` / `reduce.dot` beside its `genotype.json`. Rendering PNGs
needs the optional `graphviz` Python package (`pip install bayesnas_tf[viz]`)
and the `dot` program; without them the PNGs are skipped with one log line.
"""

from __future__ import annotations

import os
from typing import List

from absl import logging

from bayesnas_tf.io_utils import atomic_write_bytes
from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.spaces.dag.genotype import CELL_TYPES, Genotype
from bayesnas_tf.spaces.pictures import png_skip_reason, render_png

# Labels follow the paper's notation: in0 is the output of cell k-1 and in1
# that of cell k-2 (ALGORITHM.md 1.2); the cell output concatenates all nodes.
_INPUT_LABELS = {"in0": "c_{k-1}", "in1": "c_{k-2}"}


def _quote(text: str) -> str:
  return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def genotype_to_dot(genotype: Genotype, cell_type: str) -> str:
  """DOT text of one cell: one labelled edge per (op, input), nodes -> out.

  Nodes without inputs (ALGORITHM.md 3.6: they output zeros) are dashed.
  """
  cell = genotype.cell(cell_type)
  empty = set(genotype.degenerate_nodes(cell_type))
  lines = [
      f"digraph {cell_type} {{",
      "  rankdir=LR;",
      '  node [shape=box, style="rounded,filled", fillcolor=white];',
  ]
  for name, label in _INPUT_LABELS.items():
    lines.append(f"  {name} [label={_quote(label)}, fillcolor=palegreen];")
  for j in range(len(cell)):
    name = f"n{j}"
    style = ', style="rounded,dashed"' if name in empty else ""
    lines.append(f"  {name} [label={_quote(name)}, fillcolor=lightblue{style}];")
  lines.append(f"  out [label={_quote('c_{k}')}, fillcolor=lightyellow];")
  for j, node in enumerate(cell):
    for op, src in node:
      lines.append(f"  {src} -> n{j} [label={_quote(op)}];")
  # The cell output is concat(n0..n{K-1}), empty nodes included (zeros keep
  # the channel count at K*C).
  for j in range(len(cell)):
    lines.append(f"  n{j} -> out;")
  lines.append("}")
  return "\n".join(lines) + "\n"


def write_cell_pictures(genotype: Genotype,
                        out_dir: str | os.PathLike) -> List[str]:
  """Writes normal/reduce .dot files, and .png files when possible.

  Returns:
    The paths written.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  written: List[str] = []
  dots = {}
  for cell_type in CELL_TYPES:
    dots[cell_type] = genotype_to_dot(genotype, cell_type)
    path = os.path.join(out_dir, f"{cell_type}.dot")
    atomic_write_text(path, dots[cell_type])
    written.append(path)

  reason = png_skip_reason()
  if reason is not None:
    logging.info("cell PNGs skipped (the .dot files in %s are written): %s",
                 out_dir, reason)
    return written
  for cell_type in CELL_TYPES:
    path = os.path.join(out_dir, f"{cell_type}.png")
    try:
      png = render_png(dots[cell_type])
    except Exception as e:  # pylint: disable=broad-except
      # A picture is never worth failing a finished search over.
      logging.warning("could not render %s: %s", path, e)
      continue
    atomic_write_bytes(path, png)
    written.append(path)
  return written
