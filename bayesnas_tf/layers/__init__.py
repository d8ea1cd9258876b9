"""Keras layers of the supernet and of derived (child) networks."""

from bayesnas_tf.layers.bayes_cell import BayesCell
from bayesnas_tf.layers.channel_reduce import ChannelReduce
from bayesnas_tf.layers.child_cell import ChildCell
from bayesnas_tf.layers.mixed_op import MixedOp
from bayesnas_tf.layers.switched_edge import SwitchedEdge

__all__ = ["BayesCell", "ChannelReduce", "ChildCell", "MixedOp", "SwitchedEdge"]
