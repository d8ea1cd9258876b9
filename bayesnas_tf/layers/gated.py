"""The gated supernet protocol, and `GatedCells`, the mixin that implements it.

What the search (search/search_loop.py, search/hessian.py) reads from a
supernet of any family, and so what every family's supernet provides:

* `cells`: the gated cells, in forward order; each cell has `edges` (its
  gated edges, each with `gate_variables`, `mask`, `set_mask` and
  `sync_active_ops`), `gates()` (the effective gates, (E, G)),
  `set_mask(mask)` ((E, G)), `sync_active_ops()` and `num_gates_per_edge`;
* `cell_types`: one name per cell; the cells of one type share their gate
  groups (the prior's n cells of a type);
* `present_cell_types`, `cells_of_type(t)`, `stack_by_type(per_cell)`,
  `gates_by_type()` ({type: (n, E, G)}), `masks_by_type()` ({type: (E, G)}),
  `set_masks(masks)`, `sync_active_ops()`;
* `zero_gate_offsets(batch)`: one (batch, E, G) zero tensor per cell, and
  `call(images, training=None, gate_offsets=None)` that adds them to the
  gates per example (the Hessian estimators differentiate with respect to
  them);
* `arch_variables` (every gate) and `weight_variables` (everything else),
  which partition the trainable variables; `num_gates`;
* `special_hessian(method, images)`: the per-cell gate Hessians of an
  estimator that only this family has (`--hessian=diag_backprop` for the
  DAG supernet), or None.

`GatedCells` implements all of it from `cells` and `cell_types`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf


class GatedCells:
  """The gated supernet protocol (module doc) for a keras.Model with `cells`
  and `cell_types`."""

  @property
  def arch_variables(self) -> List[tf.Variable]:
    """All gates (w and w_all of every edge of every cell)."""
    return [v for cell in self.cells for v in cell.gate_variables]

  @property
  def weight_variables(self) -> List[tf.Variable]:
    """Every trainable variable that is not a gate."""
    gate_ids = {id(v) for v in self.arch_variables}
    return [v for v in self.trainable_variables if id(v) not in gate_ids]

  @property
  def num_gates(self) -> int:
    return int(sum(int(np.prod(v.shape)) for v in self.arch_variables))

  @property
  def present_cell_types(self) -> List[str]:
    """The cell types, in the order of their first cell."""
    return list(dict.fromkeys(self.cell_types))

  def cells_of_type(self, cell_type: str) -> list:
    return [c for c, t in zip(self.cells, self.cell_types) if t == cell_type]

  def stack_by_type(self, per_cell: Sequence[tf.Tensor]) -> Dict[str, tf.Tensor]:
    """One value per cell (in `self.cells` order) -> stacked per cell type.

    The one place that fixes the cell order inside a type, shared by the
    gates and the Hessians so that the prior update pairs them cell by cell.
    """
    if len(per_cell) != len(self.cells):
      raise ValueError(f"expected {len(self.cells)} values, one per cell; "
                       f"received {len(per_cell)}")
    return {t: tf.stack([v for v, ct in zip(per_cell, self.cell_types) if ct == t])
            for t in self.present_cell_types}

  def gates_by_type(self) -> Dict[str, tf.Tensor]:
    """Effective gates per cell type, (cells_of_type, num_edges, G)."""
    return self.stack_by_type([c.gates() for c in self.cells])

  def masks_by_type(self) -> Dict[str, np.ndarray]:
    """The (shared) pruning mask per cell type, (num_edges, G)."""
    return {t: np.stack([np.asarray(e.mask.numpy())
                         for e in self.cells_of_type(t)[0].edges])
            for t in self.present_cell_types}

  def set_masks(self, masks: Dict[str, np.ndarray]) -> None:
    """Applies one mask per cell type to every cell of that type."""
    for cell_type, mask in masks.items():
      for cell in self.cells_of_type(cell_type):
        cell.set_mask(mask)

  def sync_active_ops(self) -> None:
    for cell in self.cells:
      cell.sync_active_ops()

  def zero_gate_offsets(self, batch_size) -> List[tf.Tensor]:
    return [tf.zeros([batch_size, len(cell.edges), cell.num_gates_per_edge],
                     dtype=self.compute_dtype) for cell in self.cells]

  def special_hessian(self, method: str, images) -> Optional[List[tf.Tensor]]:
    """A family-only gate Hessian estimator; None: this network has none."""
    del method, images
    return None
