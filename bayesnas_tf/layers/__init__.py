"""The generic gated layers of the design (DESIGN.md 4).

What lives here: `MixedOp` (mixed_op.py: every candidate op of one edge,
weighted and summed), `SwitchedEdge` (switched_edge.py: a MixedOp with the
BayesNAS gates w, w_all and a pruning mask), the registry of the op sets they
build their candidates from (op_registry.py) and the gated supernet protocol
that the search reads from every supernet (gated.py: `GatedCells`).

Where the other layers the design names live: `BayesCell` (a cell of
SwitchedEdges over a DAG), `ChannelReduce` and `ChildCell` are in the DAG
family, bayesnas_tf/spaces/dag/ (bayes_cell.py, channel_reduce.py,
child_cell.py); `TreeEdge` and `TreeCell` in the tree family,
bayesnas_tf/spaces/tree/tree_cell.py.

What it may import: `bayesnas_tf.errors` and `bayesnas_tf.nn` (a family's op
module is imported by name when its op set is first used).
"""

from bayesnas_tf.layers.mixed_op import MixedOp
from bayesnas_tf.layers.switched_edge import SwitchedEdge

__all__ = ["MixedOp", "SwitchedEdge"]
