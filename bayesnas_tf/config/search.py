"""The search's sections: the supernet and the BayesNAS search (DESIGN.md 5)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

from bayesnas_tf.config.checks import check_choice
from bayesnas_tf.config.checks import check_momentum
from bayesnas_tf.config.checks import check_positive
from bayesnas_tf.errors import ConfigError
from bayesnas_tf.spaces import registry

# The gate Hessian estimators (search/hessian.py reads this list).
HESSIAN_METHODS = ("ggn", "ggn_mc", "exact", "diag_backprop")
DEPENDENCIES = ("paper", "official")
INITS = ("paper", "official")
# How one op per edge is chosen where a space needs it (spaces/nb201/derive.py).
OP_SCORES = ("gamma", "snr", "w")
# The paper's prune threshold: an op is pruned when the entropy of its prior,
# 1/2 ln(2 pi e gamma), is not positive (Sec. 5.3), i.e. gamma <= 1/(2 pi e).
PRUNE_THRESHOLD = 1.0 / (2.0 * math.pi * math.e)
# The search space of a bare --mode=search, and the candidate ops of its
# family that --primitives chooses from (all of them by default).
DEFAULT_SEARCH_SPACE = "bayesnas"
DEFAULT_PRIMITIVES = registry.get_family(DEFAULT_SEARCH_SPACE).primitives


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
  """The search supernet (ALGORITHM.md 1.4).

  For the tree spaces (`treecell_a`, `proxyless`: the proxyless search,
  PROXYLESS.md) the supernet is a bottleneck PyramidNet of 3 x depth_blocks
  blocks widened by alpha from start_planes; cells/channels/primitives/
  stem_multiplier then play no part.

  For `nb201` (the NAS-Bench-201 cell in the benchmark's network, NB201.md)
  `cells` counts the cells per stage (the benchmark: 5) and `channels` is C
  (16); every edge carries the benchmark's four ops, so primitives/
  stem_multiplier play no part. `bn_affine`: whether the searched conv ops'
  BNs learn a scale and an offset (the benchmark's and DARTS's search cells
  do not: an affine BN rescales an op's output behind its gate's back).
  `gate_init`: nb201's w(0) (None: 1/4, an edge starts as the mean of its
  ops; spaces/nb201/network.py says why the paper's 1 overflows there).
  Both are None (the space's default) unless set; the other spaces refuse
  them.
  """
  search_space: str = DEFAULT_SEARCH_SPACE
  cells: int = 8
  channels: int = 36
  primitives: Tuple[str, ...] = DEFAULT_PRIMITIVES
  stem_multiplier: int = 3
  depth_blocks: int = 18
  alpha: float = 84.0
  start_planes: int = 16
  bn_affine: Optional[bool] = None
  gate_init: Optional[float] = None

  def validate(self) -> None:
    # An unknown --search_space is answered with the valid ones.
    family = registry.get_family(self.search_space)
    check_positive("cells", self.cells)
    check_positive("channels", self.channels)
    check_positive("stem_multiplier", self.stem_multiplier)
    # What the family builds from the rest (DAG cells: --primitives; trees:
    # the PyramidNet's --depth_blocks, --alpha, --start_planes).
    family.check_supernet(self)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """The BayesNAS search (DESIGN.md 5; Algorithm 1/2 of the paper).

  Attributes:
    lambda_child: lambda_w^o for the op gates (paper: 0.01, 0.007, 0.005).
    lambda_origin: lambda for the edge gates w_all; None = lambda_child.
    learning_rate, momentum, weight_decay: SGD of the network weights;
      weight decay is on weights only, never on gates.
    arch_learning_rate, arch_momentum: SGD of the gates (no weight decay).
    warmup_fraction: fraction of the training split used for the warm-up;
      the rest (disjoint) is used for the joint search epoch(s).
    warmup_epochs, search_epochs: epochs per phase and iteration.
    iterations: T, the number of train -> Hessian -> update -> prune rounds.
    hessian: "ggn" (exact Gauss-Newton diagonal), "ggn_mc", "exact" or
      "diag_backprop" (the paper's diagonal back-propagation).
    hessian_batches: batches the Hessian is averaged over.
    dependency: "paper" (eq. 8 with predecessors) or "official".
    init: "paper" (gamma = omega = 1) or "official" (U(0, 1)).
    prune_threshold: prune when gamma <= this (default 1/(2 pi e)), for
      gates measured in units of their initial value w(0): the search
      applies threshold x w(0) (nb201's gates start at 1/4).
    grad_clip: global-norm clip of the weight gradients (0 = off).
    op_score: nb201 (one op per edge): the posterior score that picks the
      kept op of an edge, "gamma", "snr" or "w" (spaces/nb201/derive.py).
    benchmark_table: a CSV with an `arch` column and an accuracy column
      (e.g. NAS-Bench-201's); a finished search looks its cell up there
      (search/benchmark_table.py).
  """
  lambda_child: float = 0.01
  lambda_origin: Optional[float] = None
  learning_rate: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 1e-4
  arch_learning_rate: float = 0.1
  arch_momentum: float = 0.9
  warmup_fraction: float = 0.1
  warmup_epochs: int = 1
  search_epochs: int = 1
  iterations: int = 1
  hessian: str = "ggn"
  hessian_batches: int = 1
  dependency: str = "paper"
  init: str = "paper"
  prune_threshold: float = PRUNE_THRESHOLD
  grad_clip: float = 0.0
  op_score: str = "gamma"
  benchmark_table: Optional[str] = None

  @property
  def effective_lambda_origin(self) -> float:
    return self.lambda_child if self.lambda_origin is None else self.lambda_origin

  def validate(self) -> None:
    for name in ("lambda_child", "learning_rate", "arch_learning_rate"):
      value = getattr(self, name)
      if not value > 0 or not math.isfinite(value):
        raise ConfigError(
            f"--{name} must be > 0; received {name}={value!r} "
            "(the paper uses lambda 0.01, 0.007 or 0.005 and lr 0.1)")
    if self.lambda_origin is not None and (
        not self.lambda_origin > 0 or not math.isfinite(self.lambda_origin)):
      raise ConfigError(
          f"--lambda_origin must be > 0 (or unset to use --lambda_child); "
          f"received lambda_origin={self.lambda_origin!r}")
    check_momentum("momentum", self.momentum)
    check_momentum("arch_momentum", self.arch_momentum)
    check_positive("weight_decay", self.weight_decay, allow_zero=True)
    if not 0 < self.warmup_fraction < 1:
      raise ConfigError(
          f"--warmup_fraction must be in (0, 1); received {self.warmup_fraction!r}")
    check_positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
    check_positive("search_epochs", self.search_epochs)
    check_positive("iterations", self.iterations)
    check_choice("hessian", self.hessian, HESSIAN_METHODS)
    check_positive("hessian_batches", self.hessian_batches)
    check_choice("dependency", self.dependency, DEPENDENCIES)
    check_choice("init", self.init, INITS)
    check_positive("prune_threshold", self.prune_threshold)
    check_positive("grad_clip", self.grad_clip, allow_zero=True)
    check_choice("op_score", self.op_score, OP_SCORES)
    if self.benchmark_table is not None and not self.benchmark_table:
      raise ConfigError("--benchmark_table must name a CSV file (or be unset)")
