"""Is a finished search meaningful? Warnings that say what to change.

A search can finish without error and still mean nothing: a supernet that
never learned (test accuracy near chance) yields cells chosen by noise, an
update that pruned nothing returns the whole supernet as the "found" cell,
and one that pruned every op of a cell type returns a cell of zeros. Each
case gets one warning naming the flags to change, logged and stored in
posterior.json and result.json, so neither a reader of the log nor a script
takes such a genotype for a search result.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

from bayesnas_tf.config import ExperimentConfig

# Accuracy within this fraction of the way from chance to 1 counts as
# "near chance" (10 classes: below 0.325).
NEAR_CHANCE_MARGIN = 0.25


def chance_accuracy(num_classes: int) -> float:
  return 1.0 / max(num_classes, 1)


def search_warnings(config: ExperimentConfig, test_accuracy: float,
                    num_classes: int,
                    ops: Mapping[str, Mapping[str, int]]) -> List[str]:
  """The warnings of a finished search (empty when nothing looks wrong).

  Args:
    config: the search's configuration (the flags quoted in the advice).
    test_accuracy: of the pruned supernet at the end of the search.
    num_classes: of the dataset (chance = 1 / num_classes).
    ops: {cell type: {"kept": k, "total": n}} (`op_counts`).
  """
  search = config.search
  kept = {t: counts["kept"] for t, counts in ops.items()}
  total = {t: counts["total"] for t, counts in ops.items()}
  warnings = []
  chance = chance_accuracy(num_classes)
  if test_accuracy < chance + NEAR_CHANCE_MARGIN * (1.0 - chance):
    warnings.append(
        f"the pruned supernet ends at test accuracy {test_accuracy:.3f}, near "
        f"chance ({chance:.3f} for {num_classes} classes): its cells were "
        "chosen by an untrained network and mean little. Train longer "
        f"(--warmup_epochs={search.warmup_epochs}, "
        f"--search_epochs={search.search_epochs}), raise --learning_rate "
        f"(now {search.learning_rate:g}) or use more data; check that "
        f"augmentation suits the images (--cutout={config.data.cutout}, "
        f"--flip={config.data.flip}).")
  if kept and all(kept[t] == total[t] for t in kept):
    summary = ", ".join(f"{t} {kept[t]}/{total[t]}" for t in kept)
    warnings.append(
        f"the update pruned no op ({summary} kept): every gamma stayed above "
        f"the threshold {search.prune_threshold:.4g}, so the genotype is the "
        "whole supernet. gamma falls as the group lasso shrinks a gate and "
        "as the loss curvature grows: train the gates longer "
        f"(--search_epochs={search.search_epochs}, --iterations="
        f"{search.iterations}), raise --lambda_child (now "
        f"{search.lambda_child:g}) or --arch_learning_rate (now "
        f"{search.arch_learning_rate:g}), or sum the Hessian over larger "
        f"batches (--batch_size={config.data.batch_size}).")
  for cell_type in kept:
    if total[cell_type] and kept[cell_type] == 0:
      warnings.append(
          f"the update pruned every op of the {cell_type} cell (0/"
          f"{total[cell_type]} kept): the derived cell outputs zeros. Lower "
          f"--lambda_child (now {search.lambda_child:g}) or "
          f"--arch_learning_rate (now {search.arch_learning_rate:g}), or "
          "train the weights longer before the gates (--warmup_epochs="
          f"{search.warmup_epochs}).")
  return warnings


def op_counts(backend, masks: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, int]]:
  """{cell type: {"kept": k, "total": n}} from a search backend's kept masks."""
  kept = backend.kept_ops(masks)
  total = backend.kept_ops({t: np.ones_like(m) for t, m in masks.items()})
  return {t: {"kept": int(kept[t]), "total": int(total[t])} for t in kept}
