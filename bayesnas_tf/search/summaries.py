"""TensorBoard summaries written after each prior update of the search.

So that a user watches the architecture shrink in TensorBoard
(`tensorboard --logdir <model_dir>/tensorboard`):

* `gamma/<cell type>/<edge>/<gate>` and `entropy/<cell type>/<edge>/<gate>`:
  one scalar per group (the same gate in all cells of a type) per update;
  a group is pruned when its entropy 1/2 ln(2 pi e gamma) is <= 0;
* `kept_ops/<cell type>`: the ops still kept;
* `cells/<cell type>`: the diagram of the derived cell as an image, when
  Graphviz can render it (the `graphviz` Python package and the `dot`
  program); otherwise one log line says why and the scalars are still
  written.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

from absl import logging
import tensorflow as tf

from bayesnas_tf.spaces import registry


def cell_diagram_images(genotype) -> Dict[str, tf.Tensor]:
  """{picture name: uint8 image (1, H, W, C)} of the derived cells, drawn by
  the genotype's family; {} and one log line saying why when Graphviz is not
  available or fails ({} and no line for a family without pictures)."""
  try:
    pngs, reason = registry.family_of(genotype).pictures(genotype)
    if pngs:
      return {name: tf.io.decode_png(png)[tf.newaxis]
              for name, png in pngs.items()}
  except Exception as error:  # pylint: disable=broad-except
    # A picture is never worth failing a search over.
    reason = f"rendering failed ({error})"
  if reason is not None:
    logging.info("cell diagrams are not written to TensorBoard: %s", reason)
  return {}


def write_update_summaries(writer, step: int, groups: Sequence[Mapping],
                           ops: Mapping[str, Mapping[str, int]],
                           genotype) -> None:
  """Writes the summaries of one update at `step`.

  Args:
    writer: a `tf.summary` writer.
    step: the global step of the update.
    groups: the `groups` of posterior.json (cell_type, edge, gate, gamma,
      entropy per group).
    ops: {cell type: {"kept": k, "total": n}} after the update.
    genotype: the derived genotype; its family draws the cell diagrams
      (the DAG cells; none for the tree spaces).
  """
  images = cell_diagram_images(genotype)
  with writer.as_default(step=step):
    for group in groups:
      name = f"{group['cell_type']}/{group['edge']}/{group['gate']}"
      tf.summary.scalar(f"gamma/{name}", group["gamma"])
      tf.summary.scalar(f"entropy/{name}", group["entropy"])
    for cell_type, counts in ops.items():
      tf.summary.scalar(f"kept_ops/{cell_type}", counts["kept"])
    for cell_type, image in images.items():
      tf.summary.image(f"cells/{cell_type}", image)
  writer.flush()
