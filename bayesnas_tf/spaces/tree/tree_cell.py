"""`TreeEdge` and `TreeCell`: tree cells as Keras layers (PROXYLESS.md 1, 3.3).

One `TreeCell` serves both the search supernet and the derived network:

* `gate_kind="single"` (reading A): every non-fixed edge holds one op and one
  gate w that scales its output, y = w op(x) (the edge gate `switch_all`
  merged with the op, PROXYLESS.md 3.3 A).
* `gate_kind="mixed"` (reading B): y = sum_o w_o op_o(w_all x), as the
  proxy search's `SwitchedEdge` (ALGORITHM.md 1.1), over the candidates.
* `gate_kind="none"` (derived network): no gates; an edge's ops are summed
  (rule 5) and an edge with no op is pruned.

A pruned gate is masked (non-trainable `mask`, 1 = kept) and its op is not
computed. Whether a branch runs at all follows the derive rules, so after
pruning the supernet computes exactly the derived tree: an edge runs while
one of its ops is on; below the root a branch runs only while its child node
still has a running branch (rule 2); a root branch whose subtree is gone
keeps only its skip term (rule 3); a cell with no running root branch is
"dead" and its block becomes its shortcut (rule 4, pyramid_tree.py).

Path drop (training only): each running branch of each node is zeroed per
example with probability p and scaled by 1/(1-p) (PL tree_node.py L92-129,
which draws one flag per batch; per example has the same expectation).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.nn import PACKAGE
from bayesnas_tf.nn import init
from bayesnas_tf.spaces.tree import op_names
from bayesnas_tf.spaces.tree import ops as tree_ops
from bayesnas_tf.spaces.tree.space import TreeCellSpec, TreeNodeSpec, node_channels
from bayesnas_tf.spaces.tree.space import prune_cell, with_edge_ops

GATE_KINDS = ("none", "single", "mixed")


def _edge_layer_name(edge: str) -> str:
  return "edge_" + edge.replace(".", "_")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TreeEdge(keras.layers.Layer):
  """One edge of a tree cell: its op(s) and, in a search, its gates.

  Args:
    channels: input = output channels.
    ops: tree op names (`ops.TREE_OPS`); one for "single".
    stride: 1, or 2 for a root edge of a downsampling cell.
    gate_kind: "none", "single" or "mixed" (module doc).

  `call(x, gate_offsets=None, training=None)`: `gate_offsets` (batch, G) is
  added to the gates per example; the Hessian estimators differentiate with
  respect to these zero offsets (DESIGN.md 6).
  """

  def __init__(self, channels: int, ops: Sequence[str], stride: int = 1,
               gate_kind: str = "none", **kwargs):
    super().__init__(**kwargs)
    self.op_names = op_names.check_tree_ops(ops)
    if not self.op_names:
      raise ValueError("`ops` must list at least one tree op.")
    if len(set(self.op_names)) != len(self.op_names):
      raise ValueError(f"`ops` lists an op twice. Received: ops={list(ops)!r}.")
    if gate_kind not in GATE_KINDS:
      raise ValueError(
          f"`gate_kind` must be one of {GATE_KINDS}. Received: gate_kind={gate_kind!r}.")
    if gate_kind == "single" and len(self.op_names) != 1:
      raise ValueError(
          f"a single-gate edge holds exactly one op. Received: ops={list(ops)!r}.")
    self.channels = channels
    self.stride = stride
    self.gate_kind = gate_kind
    # The ops compute in this edge's dtype policy (Keras 3 does not hand a
    # layer's policy to the sublayers it creates).
    self.candidate_ops = [tree_ops.make_tree_op(name, channels, stride, name=name,
                                                dtype=self.dtype_policy)
                          for name in self.op_names]
    self._active_ops: Tuple[int, ...] = tuple(range(len(self.op_names)))
    self._edge_active = True

  @property
  def num_gates(self) -> int:
    """G: 0 (none), 1 (single) or ops + 1 (mixed; the last is w_all)."""
    return {"none": 0, "single": 1, "mixed": len(self.op_names) + 1}[self.gate_kind]

  def build(self, input_shape):
    for op in self.candidate_ops:
      op.build(input_shape)
    if self.gate_kind == "single":
      self.w = self.add_weight(name="w", shape=(1,), initializer="ones")
    elif self.gate_kind == "mixed":
      self.w = self.add_weight(name="w", shape=(len(self.op_names),),
                               initializer="ones")
      self.w_all = self.add_weight(name="w_all", shape=(), initializer="ones")
    if self.gate_kind != "none":
      self.mask = self.add_weight(name="mask", shape=(self.num_gates,),
                                  initializer="ones", trainable=False)
    self.built = True

  @property
  def gate_variables(self) -> List[tf.Variable]:
    if self.gate_kind == "single":
      return [self.w]
    if self.gate_kind == "mixed":
      return [self.w, self.w_all]
    return []

  def gates(self) -> tf.Tensor:
    """The effective gates (G,): mask * [w] or mask * [w_o..., w_all]."""
    if self.gate_kind == "single":
      return self.w.value * self.mask.value
    if self.gate_kind == "mixed":
      raw = tf.concat([self.w.value, tf.reshape(self.w_all.value, [1])], axis=0)
      return raw * self.mask.value
    return tf.zeros([0])

  def set_mask(self, mask) -> None:
    mask = np.asarray(mask, dtype=np.float32).reshape(self.num_gates)
    self.mask.assign(mask)
    self.sync_active_ops()

  def sync_active_ops(self) -> None:
    """Re-reads the mask eagerly (e.g. after a restore); traced functions then
    leave pruned ops out of the graph."""
    if self.gate_kind == "none":
      return
    mask = np.asarray(self.mask.numpy())
    if self.gate_kind == "single":
      self._active_ops = (0,) if mask[0] > 0 else ()
      return
    self._active_ops = tuple(int(i) for i in np.flatnonzero(mask[:-1] > 0))
    self._edge_active = bool(mask[-1] > 0)

  @property
  def active_ops(self) -> Tuple[int, ...]:
    return self._active_ops if self._edge_active else ()

  @property
  def alive(self) -> bool:
    return bool(self.active_ops)

  def call(self, inputs, gate_offsets=None, training=None):
    if self.gate_kind == "none":
      outputs = [op(inputs, training=training) for op in self.candidate_ops]
      return tf.add_n(outputs) if len(outputs) > 1 else outputs[0]
    gates = self.gates()
    if gate_offsets is not None:
      gates = (gates[tf.newaxis, :] + tf.cast(gate_offsets, gates.dtype)) * (
          self.mask.value[tf.newaxis, :])
    if not self.active_ops:
      shape = tf.shape(inputs)
      return tf.zeros(tf.stack([shape[0], (shape[1] - 1) // self.stride + 1,
                                (shape[2] - 1) // self.stride + 1, self.channels]),
                      inputs.dtype)
    x = inputs
    if self.gate_kind == "mixed":
      x = init.scale_by(x, gates[..., -1])
    total = None
    for index in self.active_ops:
      term = init.scale_by(self.candidate_ops[index](x, training=training),
                          gates[..., index])
      total = term if total is None else total + term
    return total

  def compute_output_shape(self, input_shape):
    return self.candidate_ops[0].compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({"channels": self.channels, "ops": list(self.op_names),
                   "stride": self.stride, "gate_kind": self.gate_kind})
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TreeCell(keras.layers.Layer):
  """A tree cell on C channels (C -> C, spatial size / stride).

  Args:
    cell_spec: a `TreeCellSpec` or its dict (`to_dict()`).
    channels: C, the block's bottleneck width.
    stride: 1, or 2 in a downsampling block; taken by the pre-edge when
      there is one, else by every root edge.
    gate_kind: "none" (derived network), "single" or "mixed" (search).
    fixed_edges: edge names that carry no gate (search only).

  `call(x, gate_offsets=None, drop_prob=None, training=None)`:
  `gate_offsets` is (batch, E, G) for the E gated edges in `edges` order;
  `drop_prob` is the path-drop probability (training only).
  """

  def __init__(self, cell_spec, channels: int, stride: int = 1,
               gate_kind: str = "none", fixed_edges: Sequence[str] = (),
               **kwargs):
    super().__init__(**kwargs)
    self.cell_spec = TreeCellSpec.from_dict(cell_spec)
    init.check_positive("channels", channels)
    init.check_stride(stride)
    if gate_kind not in GATE_KINDS:
      raise ValueError(
          f"`gate_kind` must be one of {GATE_KINDS}. Received: gate_kind={gate_kind!r}.")
    self.channels = channels
    self.stride = stride
    self.gate_kind = gate_kind
    self.fixed_edges = tuple(fixed_edges)
    spec = self.cell_spec
    unknown = [e for e in self.fixed_edges if e not in spec.edge_names]
    if unknown:
      raise ValueError(f"`fixed_edges` names unknown edges {unknown}.")
    root_width = channels * spec.root_channels_multiple
    policy = self.dtype_policy
    self.pre_edge = (None if spec.pre_edge is None else
                     tree_ops.make_pre_edge(spec.pre_edge, channels, stride,
                                            dtype=policy))
    root_stride = stride if spec.pre_edge is None else 1

    # Edge layers (preorder), widths and strides, from the spec as data. The
    # layers live in two tracked lists; name -> position maps are plain ints
    # so no layer is tracked twice.
    self.all_edges: List[TreeEdge] = []
    self.branch_bns: List[keras.layers.Layer] = []
    self._edge_pos: Dict[str, int] = {}
    self._bn_pos: Dict[str, int] = {}
    self._gated_pos: List[int] = []
    self._edge_width: Dict[str, int] = {}

    def visit(node: TreeNodeSpec, width: int, prefix: str, is_root: bool) -> int:
      branch_widths, out = node_channels(node, width)
      for i, (branch, w) in enumerate(zip(node.branches, branch_widths)):
        name = f"{prefix}{i}"
        self._edge_width[name] = w
        if branch.ops:
          kind = "none" if name in self.fixed_edges else gate_kind
          if kind != "none":
            self._gated_pos.append(len(self.all_edges))
          self._edge_pos[name] = len(self.all_edges)
          self.all_edges.append(TreeEdge(
              w, branch.ops, root_stride if is_root else 1, kind,
              name=_edge_layer_name(name), dtype=policy))
        if branch.child is not None:
          if visit(branch.child, w, name + ".", False) != w:
            raise ValueError(f"the child node of edge {name} changes its width")
          if is_root and node.branch_bn:
            self._bn_pos[name] = len(self.branch_bns)
            self.branch_bns.append(
                init.batch_norm(f"branch_bn_{name[1:]}", policy))
      return out

    out = visit(spec.root, root_width, "e", True)
    if out != channels:
      raise ValueError(
          f"the cell maps {channels} channels to {out}; a cell keeps its width.")
    self.seed_generator = None
    self._alive: Dict[str, bool] = {}
    self._refresh_alive()

  @property
  def edges(self) -> List[TreeEdge]:
    """The gated edges, in preorder (the rows of `gates()`)."""
    return [self.all_edges[i] for i in self._gated_pos]

  def edge_layer(self, edge: str) -> Optional[TreeEdge]:
    """The layer of edge `edge` ("e0.1"), None when the edge has no op."""
    pos = self._edge_pos.get(edge)
    return None if pos is None else self.all_edges[pos]

  def _branch_bn(self, edge: str):
    pos = self._bn_pos.get(edge)
    return None if pos is None else self.branch_bns[pos]

  # --- which branches run --------------------------------------------------
  def _refresh_alive(self) -> None:
    """Which branches run: the derive rules (space.prune_cell) applied
    to the ops whose gates are on, so the supernet computes the tree that
    `derive` would write."""
    active = {}
    for name, pos in self._edge_pos.items():
      layer = self.all_edges[pos]
      active[name] = [layer.op_names[i] for i in layer.active_ops]
    for name, branch, _, _ in self.cell_spec.walk():
      active.setdefault(name, [])  # Edges without ops (derived cells).
    pruned = prune_cell(with_edge_ops(self.cell_spec, active))
    alive: Dict[str, bool] = {}
    if pruned is not None:
      for name, branch, _, _ in pruned.walk():
        alive[name] = bool(branch.ops)
        alive[name + "/child"] = branch.child is not None
    self._cell_alive = pruned is not None
    self._alive = alive

  @property
  def alive(self) -> bool:
    """False when no root branch runs (the block is then its shortcut)."""
    return self._cell_alive

  def sync_active_ops(self) -> None:
    for edge in self.edges:
      edge.sync_active_ops()
    self._refresh_alive()

  # --- gates ----------------------------------------------------------------
  @property
  def num_gates_per_edge(self) -> int:
    return self.edges[0].num_gates if self.edges else 0

  def gates(self) -> tf.Tensor:
    """Effective gates of this cell, (E, G)."""
    return tf.stack([edge.gates() for edge in self.edges])

  @property
  def gate_variables(self) -> List[tf.Variable]:
    return [v for edge in self.edges for v in edge.gate_variables]

  def set_mask(self, mask) -> None:
    for edge, edge_mask in zip(self.edges, np.asarray(mask)):
      edge.set_mask(edge_mask)
    self._refresh_alive()

  # --- building -------------------------------------------------------------
  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if input_shape[-1] is not None and input_shape[-1] != self.channels:
      raise ValueError(
          f"TreeCell expects {self.channels} input channels. Received: "
          f"input_shape={input_shape}.")
    shape = input_shape
    if self.pre_edge is not None:
      self.pre_edge.build(shape)
      shape = tuple(self.pre_edge.compute_output_shape(shape))
    # Made inside the layer's scope so its state has a stable checkpoint path
    # (see ChildCell.build).
    self.seed_generator = keras.random.SeedGenerator(name="drop_path_seed")
    batch, height, width, _ = shape
    root_stride = self.stride if self.pre_edge is None else 1
    out_hw = (init.strided_size(height, root_stride), init.strided_size(width, root_stride))

    def visit(node: TreeNodeSpec, prefix: str, is_root: bool):
      for i, branch in enumerate(node.branches):
        name = f"{prefix}{i}"
        w = self._edge_width[name]
        layer = self.edge_layer(name)
        hw = (height, width) if is_root else out_hw
        if layer is not None:
          layer.build((batch, *hw, w))
        bn = self._branch_bn(name)
        if bn is not None:
          bn.build((batch, *out_hw, w))
        if branch.child is not None:
          visit(branch.child, name + ".", False)

    visit(self.cell_spec.root, "e", True)
    self.built = True

  # --- forward --------------------------------------------------------------
  def call(self, inputs, gate_offsets=None, drop_prob=None, training=None):
    if not self._cell_alive:
      return tf.zeros(self._output_shape_of(inputs), dtype=inputs.dtype)
    x = inputs
    if self.pre_edge is not None:
      x = self.pre_edge(x, training=training)
    offsets = {}
    if gate_offsets is not None:
      offsets = {edge.name: gate_offsets[:, e, :] for e, edge in enumerate(self.edges)}
    drop = bool(training) and drop_prob is not None
    return self._node(self.cell_spec.root, x, "e", True, offsets,
                      drop_prob if drop else None, training)

  def _node(self, node, x, prefix, is_root, offsets, drop_prob, training):
    branch_widths, _ = node_channels(node, x.shape[-1])
    inputs = (tf.split(x, branch_widths, axis=-1) if node.alloc == "split"
              else [x] * len(node.branches))
    outputs = []
    for i, (branch, branch_input) in enumerate(zip(node.branches, inputs)):
      name = f"{prefix}{i}"
      if not self._alive.get(name, False):
        if node.merge == "concat":
          # A pruned slot of a split/concat node contributes zeros, so the
          # cell keeps its width.
          stride = self.stride if (is_root and self.pre_edge is None) else 1
          outputs.append(self._strided_zeros(branch_input, stride))
        continue
      layer = self.edge_layer(name)
      y = layer(branch_input, gate_offsets=offsets.get(layer.name),
                training=training)
      if self._alive[name + "/child"]:
        z = self._node(branch.child, y, name + ".", False, offsets, drop_prob,
                       training)
        bn = self._branch_bn(name)
        y = z if bn is None else bn(z, training=training) + y
      if drop_prob is not None:
        y = self._drop(y, drop_prob)
      outputs.append(y)
    if node.merge == "concat":
      return tf.concat(outputs, axis=-1)
    return tf.add_n(outputs) if len(outputs) > 1 else outputs[0]

  def _strided_zeros(self, x, stride):
    shape = tf.shape(x)
    return tf.zeros(tf.stack([shape[0], (shape[1] - 1) // stride + 1,
                              (shape[2] - 1) // stride + 1, shape[3]]), x.dtype)

  def _drop(self, y, drop_prob):
    p = tf.cast(drop_prob, tf.float32)
    noise = keras.random.uniform([tf.shape(y)[0], 1, 1, 1],
                                 seed=self.seed_generator, dtype="float32")
    # u ~ U[0, 1): keep with probability 1 - p; p = 0 is an exact identity.
    mask = tf.cast(noise >= p, tf.float32) / (1.0 - p)
    return y * tf.cast(mask, y.dtype)

  def _output_shape_of(self, inputs):
    shape = tf.shape(inputs)
    return tf.stack([shape[0], (shape[1] - 1) // self.stride + 1,
                     (shape[2] - 1) // self.stride + 1, self.channels])

  def compute_output_shape(self, input_shape):
    return init.strided_shape(input_shape, self.stride, self.channels)

  def get_config(self):
    config = super().get_config()
    config.update({"cell_spec": self.cell_spec.to_dict(), "channels": self.channels,
                   "stride": self.stride, "gate_kind": self.gate_kind,
                   "fixed_edges": list(self.fixed_edges)})
    return config
