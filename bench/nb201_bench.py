"""NAS-Bench-201 benchmark: K seeds of the NB201 search, each cell looked up.

    python bench/nb201_bench.py                        # the defaults of --search_space=nb201, 3 seeds
    python bench/nb201_bench.py --variants=default,paper --seeds=3
    python bench/nb201_bench.py --small                # a 1-cell-per-stage C = 4 run, minutes

Every search is a `python main.py --mode=search --search_space=nb201` process
on the CIFAR-10 subset of ../shared/data (--data), with
--benchmark_table=../shared/data/nb201_cifar10.csv, in its own folder under
--out_dir (a rerun reuses finished runs: delete the folder to redo one).
Prints one row per (variant, seed): the cell string, its table accuracy and
percentile, the search's wall time; then per variant the mean +- std, beside
the anchor rows of ../shared/NB201.md. Figures are measurements, nothing is
asserted.

Variants (--variants, comma-separated; `name=FLAGS` adds your own, flags
separated by spaces):
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))

flags.DEFINE_string("data", "npz:" + os.path.join(SHARED, "cifar10_subset.npz"),
                    "Dataset spec of the searches.")
flags.DEFINE_string("table", os.path.join(SHARED, "nb201_cifar10.csv"),
                    "The benchmark table (arch, accuracy).")
flags.DEFINE_list("variants", ["default"], "Variants to run (see the doc).")
flags.DEFINE_integer("seeds", 3, "Seeds per variant: 0 .. K-1.")
flags.DEFINE_integer("first_seed", 0, "The first seed.")
flags.DEFINE_string("out_dir", "runs/nb201_bench", "Where the runs go.")
flags.DEFINE_bool("small", False,
                  "One cell per stage, C = 4, 1,000 images: checks the bench "
                  "in minutes (its figures mean nothing).")
flags.DEFINE_string("extra", "", "Flags added to every search.")
FLAGS = flags.FLAGS

# name -> the flags that make the variant (on top of --search_space=nb201's
# defaults, spaces/nb201/family.py SEARCH_DEFAULTS). `paper` is the paper's
# search (ALGORITHM.md 3: a 10% warm-up, one joint epoch, one update, the
# prior variance gamma as the op score) at the gate scale the 15-cell
# supernet needs (w(0) = 1/4; 1 overflows). The others change one setting.
VARIANTS = {
    "default": "",
    "paper": "--flagfile=" + os.path.join(ROOT, "flags", "search_nb201_paper.flags"),
    "paper_no_bn_affine": "--flagfile=" + os.path.join(ROOT, "flags", "search_nb201_paper.flags")
                          + " --nobn_affine",
    "paper_batch_64": "--flagfile=" + os.path.join(ROOT, "flags", "search_nb201_paper.flags")
                      + " --batch_size=64",
    "short_warmup": "--warmup_fraction=0.1 --warmup_epochs=1",
    "hessian_batches_8": "--hessian_batches=8",
    "bn_affine": "--bn_affine",
    "ggn_mc": "--hessian=ggn_mc",
    "exact": "--hessian=exact",
}

SMALL = ("--cells=1 --channels=4 --max_train_examples=1000 "
         "--max_eval_examples=200 --batch_size=32")

# NB201.md's published CIFAR-10 test accuracies (mean +- std over runs).
ANCHORS = (
    ("DARTS (1st/2nd order)", "54.30 +- 0.00"),
    ("SETN", "87.64"),
    ("a uniformly random cell", "87.06 (mean of the table)"),
    ("RSPS", "87.66 +- 1.69"),
    ("SNAS", "92.77 +- 0.83"),
    ("NASWOT (1000 samples)", "92.96 +- 0.81"),
    ("FairNAS", "93.23 +- 0.18"),
    ("PC-DARTS", "93.41 +- 0.30"),
    ("GDAS", "93.61 +- 0.09"),
    ("DARTS-", "93.80 +- 0.40"),
    ("random search, full training", "93.83 +- 0.09"),
    ("DrNAS", "94.36"),
    ("best cell in the space", "94.37"),
)


def rederived(model_dir: str, table: dict) -> dict:
  """op score -> (cell, table accuracy) derived from the run's own
  posterior.json and kept masks: the op-score ablation at no extra search."""
  from bayesnas_tf.spaces.nb201 import derive, space  # pylint: disable=g-import-not-at-top
  with open(os.path.join(model_dir, "posterior.json")) as f:
    groups = json.load(f)["groups"]
  gates = space.OPS + ("all",)
  edges = [f"{i}->{j}" for i, j in space.EDGES]
  n = len(groups[0]["w"])
  arrays = {"gamma": np.zeros((len(edges), len(gates))),
            "w": np.zeros((n, len(edges), len(gates))),
            "covariance": np.zeros((n, len(edges), len(gates)))}
  kept = np.zeros((len(edges), len(gates)), bool)
  for group in groups:
    e, g = edges.index(group["edge"]), gates.index(group["gate"])
    arrays["gamma"][e, g] = group["gamma"]
    arrays["w"][:, e, g] = group["w"]
    arrays["covariance"][:, e, g] = group["C"]
    kept[e, g] = bool(group["kept"])
  out = {}
  for score in derive.OP_SCORES:
    cell = derive.derive_nb201_genotype(kept, derive.op_scores(arrays, score)).arch
    out[score] = (cell, table.get(cell))
  return out


def variant_flags(name: str) -> list:
  if "=" in name:
    name, text = name.split("=", 1)
    return name, shlex.split(text)
  if name not in VARIANTS:
    raise app.UsageError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)} "
                         "(or name=FLAGS)")
  return name, shlex.split(VARIANTS[name])


def run_search(name: str, extra: list, seed: int) -> dict:
  """Runs (or reuses) one search; returns its result.json plus wall time."""
  model_dir = os.path.join(FLAGS.out_dir, name, f"seed{seed}")
  result_path = os.path.join(model_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  # The variant's flags (a flag file among them) first: the bench's own
  # --model_dir, --seed and data come after them, so they win.
  args = [sys.executable, os.path.join(ROOT, "main.py")] + extra
  args += ["--mode=search", "--search_space=nb201", f"--dataset={FLAGS.data}",
           f"--benchmark_table={FLAGS.table}", f"--seed={seed}",
           f"--model_dir={model_dir}", "--noprogress", "--log_every=100"]
  args += shlex.split(FLAGS.extra)
  if FLAGS.small:
    args += shlex.split(SMALL)
  os.makedirs(model_dir, exist_ok=True)
  start = time.monotonic()
  with open(os.path.join(model_dir, "search.log"), "w") as log:
    process = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  wall = time.monotonic() - start
  if process.returncode != 0 or not os.path.exists(result_path):
    return {"error": f"exit {process.returncode}, see {model_dir}/search.log",
            "wall_time_s": wall}
  with open(result_path) as f:
    return json.load(f)


def main(argv):
  del argv
  sys.path.insert(0, ROOT)
  from bayesnas_tf.search.benchmark_table import BenchmarkTable  # pylint: disable=g-import-not-at-top
  accuracy_of = BenchmarkTable.load(FLAGS.table).accuracies
  table = {}
  scores = {}
  for spec in FLAGS.variants:
    name, extra = variant_flags(spec)
    rows = []
    for seed in range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds):
      result = run_search(name, extra, seed)
      benchmark = result.get("benchmark") or {}
      row = (seed, result.get("genotype"), benchmark.get("accuracy"),
             benchmark.get("percentile"), result.get("wall_time_s"),
             result.get("error") or benchmark.get("error"))
      rows.append(row)
      print(f"{name:24s} seed {seed}  {row[1] or '-':86s}  "
            f"{_fmt(row[2], '6.2f')}  pct {_fmt(row[3], '7.3f')}  "
            f"{_fmt(row[4], '6.0f')} s" + (f"  ({row[5]})" if row[5] else ""),
            flush=True)
      if row[1]:
        for score, (cell, accuracy) in rederived(
            os.path.join(FLAGS.out_dir, name, f"seed{seed}"), accuracy_of).items():
          scores.setdefault(f"{name}, op_score={score}", []).append(accuracy)
    table[name] = rows
  print()
  print(f"{'variant':24s} {'seeds':>5}  {'table accuracy':>16}  {'percentile':>16}  "
        f"{'search wall time':>18}")
  for name, rows in table.items():
    accuracies = [r[2] for r in rows if r[2] is not None]
    percentiles = [r[3] for r in rows if r[3] is not None]
    walls = [r[4] for r in rows if r[4] is not None]
    print(f"{name:24s} {len(accuracies):5d}  {_mean_std(accuracies, 2):>16}  "
          f"{_mean_std(percentiles, 2):>16}  {_mean_std(walls, 0):>16} s")
  if scores:
    print()
    print("the same searches, each op score applied to their posteriors:")
    for name, accuracies in scores.items():
      print(f"  {name:36s} {_mean_std([a for a in accuracies if a is not None], 2):>16}"
            f"   ({', '.join(_fmt(a, '.2f') for a in accuracies)})")
  print()
  print("anchors (../shared/NB201.md, CIFAR-10 test accuracy):")
  for method, figure in ANCHORS:
    print(f"  {method:32s} {figure}")


def _fmt(value, spec):
  return "-" if value is None else format(value, spec)


def _mean_std(values, digits):
  if not values:
    return "-"
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.{digits}f} +- {std:.{digits}f}"


if __name__ == "__main__":
  app.run(main)
