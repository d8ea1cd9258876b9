"""ARD group priors over kernel groups and their update (ALGORITHM.md 7).

Each group g (a filter, a channel or a kernel shape, see `structure.py`)
shares one gamma_g. The prior is placed on the kernel measured in units of
its layer's scale, W = r_L * w~ with r_L the root-mean-square of the layer's
kernel when compression starts: a gate has scale 1, a weight of a layer with
fan-in n about sqrt(2/n), and without this the threshold 1/(2 pi e) would
mean "prune everything" in wide layers and "prune nothing" in narrow ones.
In those units (H~ = r_L^2 H), one update, with the same arithmetic as the
search (`search.prior.group_statistics`, the one implementation of eq. 17-19):

    H'_n  = H~_n / lambda                    (lambda: noise variance, as in the search)
    C_n   = (1/gamma_g + H'_n)^-1            eq. 17
    omega_g = sqrt(sum_{n in g} alpha_n)     eq. 18 with the group sum
    gamma_g = ||w~_g||_2 / omega_g           eq. 19 / 20 (no hierarchy above weights)
    pruned  <=> gamma_g <= threshold         (1/(2 pi e): non-positive entropy)

and the re-weighted group lasso lambda * sum_g omega_g ||w~_g||_2 (eq. 21)
is `search.prior.group_lasso_penalty`. A group with zero curvature on every
member (omega = 0: e.g. a unit whose ReLU never fires on the Hessian batches)
is not constrained by the data at all and eq. 19 would divide by zero; it is
pruned, since removing it changes no prediction on those batches. A pruned
group stays pruned, keeps its last gamma and omega and leaves the penalty.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Sequence

import numpy as np
import tensorflow as tf

from bayesnas_tf.compress.structure import GroupSet
from bayesnas_tf.search import prior as prior_lib

DTYPE = prior_lib.DTYPE


@dataclasses.dataclass(frozen=True)
class SetUpdate:
  """One update of one group set; arrays of shape (num_groups,)."""
  gamma: np.ndarray
  omega: np.ndarray
  kept: np.ndarray
  hessian_mean: np.ndarray  # mean H' over the members, for logging


def update_group_set(group_set: GroupSet, kernel, hessian, gamma_prev,
                     omega_prev, kept_prev, lambda_group: float,
                     threshold: float, scale: float = 1.0) -> SetUpdate:
  """eq. 17-20 for every group of one set (pure function).

  `scale` is the layer's r_L: the update sees w~ = W / r_L, H~ = r_L^2 H.
  """
  weights = group_set.view(tf.cast(kernel, DTYPE)) / scale
  hessian_scaled = tf.maximum(group_set.view(tf.cast(hessian, DTYPE)), 0.0) * (
      scale ** 2 / lambda_group)
  gamma_prev = np.asarray(gamma_prev, np.float64)
  kept_prev = np.asarray(kept_prev, bool)
  _, _, omega, switch = prior_lib.group_statistics(
      gamma_prev[:, np.newaxis], weights, hessian_scaled, axes=[1])
  # Zero curvature everywhere in the group: no evidence for it (module doc).
  switch = np.where(omega.numpy() > 0, switch.numpy(), 0.0)
  gamma = np.where(kept_prev, switch, gamma_prev)
  omega = np.where(kept_prev, omega.numpy(), np.asarray(omega_prev, np.float64))
  kept = kept_prev & (gamma > threshold)
  return SetUpdate(gamma, omega, kept,
                   tf.reduce_mean(hessian_scaled, axis=1).numpy())


class WeightGroupPrior(tf.Module):
  """gamma, omega and kept (0/1) per group of every set, as variables."""

  def __init__(self, group_sets: Sequence[GroupSet], name: str = "group_prior"):
    super().__init__(name=name)
    self.group_sets = tuple(group_sets)
    self.gamma: Dict[str, tf.Variable] = {}
    self.omega: Dict[str, tf.Variable] = {}
    self.kept: Dict[str, tf.Variable] = {}
    # r_L per weighted layer (1 until `set_scales`).
    self.scales: Dict[str, tf.Variable] = {
        str(i): tf.Variable(1.0, dtype=DTYPE, trainable=False, name=f"scale_{i}")
        for i in sorted({s.layer_index for s in self.group_sets})}
    for s in self.group_sets:
      key = s.name.replace("/", "_")
      # Algorithm 1's start, gamma(0) = omega(0) = 1: the first rounds are a
      # plain group lasso.
      self.gamma[s.name] = tf.Variable(np.ones(s.num_groups), dtype=DTYPE,
                                       trainable=False, name=f"{key}_gamma")
      self.omega[s.name] = tf.Variable(np.ones(s.num_groups), dtype=DTYPE,
                                       trainable=False, name=f"{key}_omega")
      self.kept[s.name] = tf.Variable(np.ones(s.num_groups), dtype=DTYPE,
                                      trainable=False, name=f"{key}_kept")

  def set_scales(self, kernels: Mapping[int, tf.Variable]) -> None:
    """r_L = RMS of each layer's kernel (or BN stack) now (called once,
    before round 1)."""
    for key, variable in self.scales.items():
      kernel = tf.cast(kernels[int(key)], DTYPE)
      variable.assign(tf.sqrt(tf.reduce_mean(tf.square(kernel))))

  def scale(self, layer_index: int) -> float:
    return float(self.scales[str(layer_index)].numpy())

  def penalty(self, kernels: Mapping[int, tf.Variable], lambda_group: float):
    """lambda * sum_g omega_g ||w~_g||_2 over the kept groups (eq. 21)."""
    members, weights = {}, {}
    for s in self.group_sets:
      kernel = kernels[s.layer_index]
      scale = tf.cast(self.scales[str(s.layer_index)], kernel.dtype)
      # group_lasso_penalty takes norms over axis 0: (members, groups).
      members[s.name] = tf.transpose(s.view(kernel)) / scale
      weights[s.name] = tf.cast(self.omega[s.name] * self.kept[s.name], kernel.dtype)
    return prior_lib.group_lasso_penalty(members, weights, lambda_group)

  def update(self, kernels: Mapping[int, tf.Variable],
             hessians: Mapping[int, tf.Tensor], lambda_group: float,
             threshold: float) -> Dict[str, SetUpdate]:
    results = {}
    for s in self.group_sets:
      result = update_group_set(
          s, kernels[s.layer_index], hessians[s.layer_index],
          self.gamma[s.name].numpy(), self.omega[s.name].numpy(),
          self.kept[s.name].numpy() > 0, lambda_group, threshold,
          self.scale(s.layer_index))
      self.gamma[s.name].assign(result.gamma)
      self.omega[s.name].assign(result.omega)
      self.kept[s.name].assign(result.kept.astype(np.float64))
      results[s.name] = result
    return results

  def kept_arrays(self) -> Dict[str, np.ndarray]:
    return {name: v.numpy() > 0 for name, v in self.kept.items()}

  def set_kept(self, name: str, kept: np.ndarray) -> None:
    self.kept[name].assign(np.asarray(kept, np.float64))
