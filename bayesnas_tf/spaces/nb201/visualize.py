"""A picture of an NB201 cell: DOT text always, a PNG when Graphviz is there
(spaces/pictures.py)."""

from __future__ import annotations

import os
from typing import List

from absl import logging

from bayesnas_tf.spaces import pictures
from bayesnas_tf.spaces.nb201 import space
from bayesnas_tf.spaces.nb201.genotype import NB201Genotype


def genotype_to_dot(genotype: NB201Genotype) -> str:
  """Nodes 0 (input) .. 3 (output); one labelled edge per non-`none` op;
  nodes without input (they compute zeros) dashed."""
  empty = set(genotype.nodes_without_input())
  lines = ["digraph nb201 {", "  rankdir=LR;",
           '  node [shape=box, style="rounded,filled", fillcolor=white];',
           '  label="' + genotype.arch + '"; labelloc=b; fontsize=9;']
  colors = {0: "palegreen", space.NUM_NODES - 1: "lightyellow"}
  for j in range(space.NUM_NODES):
    style = ', style="rounded,dashed"' if j in empty else ""
    lines.append(f'  n{j} [label="{j}", '
                 f'fillcolor={colors.get(j, "lightblue")}{style}];')
  for (src, dst), op in zip(space.EDGES, genotype.ops):
    if op != space.NONE:
      lines.append(f'  n{src} -> n{dst} [label="{op}"];')
  lines.append("}")
  return "\n".join(lines) + "\n"


def write_cell_pictures(genotype: NB201Genotype, out_dir) -> List[str]:
  """Writes cells/cell.dot (and cell.png when Graphviz can render it)."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  dot = genotype_to_dot(genotype)
  path = os.path.join(out_dir, f"{space.CELL_TYPE}.dot")
  with open(path, "w", encoding="utf-8") as f:
    f.write(dot)
  written = [path]
  reason = pictures.png_skip_reason()
  if reason is not None:
    logging.info("cell PNG skipped (the .dot file in %s is written): %s",
                 out_dir, reason)
    return written
  try:
    png = pictures.render_png(dot)
  except Exception as error:  # pylint: disable=broad-except
    # A picture is never worth failing a finished search over.
    logging.warning("could not render the NB201 cell picture: %s", error)
    return written
  png_path = os.path.join(out_dir, f"{space.CELL_TYPE}.png")
  with open(png_path, "wb") as f:
    f.write(png)
  return written + [png_path]
