"""DOT pictures of derived tree cells, one file per PyramidNet block.

Standard library only: a search of a tree space always leaves
`cells/block_XX.dot` beside its genotype.json (render them with Graphviz,
e.g. `dot -Tpng block_01.dot -o block_01.png`). A block whose cell was
removed gets a one-node picture saying it is its shortcut.
"""

from __future__ import annotations

import os
from typing import List

from bayesnas_tf.io_utils import atomic_write_text
from bayesnas_tf.spaces.tree.genotype import TreeGenotype
from bayesnas_tf.spaces.tree.space import TreeCellSpec, TreeNodeSpec, block_name


def _quote(text: str) -> str:
  return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tree_cell_to_dot(cell: TreeCellSpec | None, title: str) -> str:
  """DOT text: one box per node (alloc/merge), one labelled arrow per edge."""
  lines = [f"digraph {_quote(title)} {{", "  rankdir=TB;",
           '  node [shape=box, style="rounded,filled", fillcolor=white];']
  if cell is None:
    lines.append(f"  shortcut [label={_quote('cell removed: shortcut only')}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
  lines.append(f"  input [label={_quote('input C')}, fillcolor=palegreen];")
  top = "input"
  if cell.pre_edge is not None:
    lines.append(f"  pre [label={_quote(cell.pre_edge)}, fillcolor=lightyellow];")
    lines.append("  input -> pre;")
    top = "pre"

  def visit(node: TreeNodeSpec, node_id: str, prefix: str):
    label = f"{node.alloc}/{node.merge}" + (" +BN skip" if node.branch_bn else "")
    lines.append(f"  {node_id} [label={_quote(label)}, fillcolor=lightblue];")
    for i, branch in enumerate(node.branches):
      name = f"{prefix}{i}"
      if not branch.ops:
        continue
      child_id = "n_" + name.replace(".", "_")
      ops = "+".join(branch.ops)
      if branch.child is None:
        lines.append(f"  {child_id} [label={_quote(name)}, shape=point];")
      else:
        visit(branch.child, child_id, name + ".")
      lines.append(f"  {node_id} -> {child_id} [label={_quote(ops)}];")

  visit(cell.root, "root", "e")
  lines.append(f"  {top} -> root;")
  lines.append("}")
  return "\n".join(lines) + "\n"


def write_tree_pictures(genotype: TreeGenotype, out_dir: str | os.PathLike) -> List[str]:
  """Writes block_XX.dot for every block; returns the paths."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for index, cell in enumerate(genotype.cells):
    path = os.path.join(out_dir, f"{block_name(index)}.dot")
    atomic_write_text(path, tree_cell_to_dot(cell, block_name(index)))
    written.append(path)
  return written
