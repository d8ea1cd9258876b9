"""bayesnas_tf command line: `bayesnas_tf --mode=search [--flagfile=...]`.

The same command three ways: the `bayesnas_tf` console script of an
installed package, `python main.py ...` in a checkout, and
`python -m bayesnas_tf.cli ...`. All flags are defined here and only here;
they become a frozen `ExperimentConfig` that the library takes (STYLE.md
13-14). A flag left unset takes the default of the mode's configuration
(e.g. the search's SGD lr 0.1).

What it may import: everything below it (config, data.spec, errors, the
search-space registry; the modes once the flags are checked).
"""

import importlib.util
import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Quiet TF's C++ start-up logs.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from bayesnas_tf import config as config_lib
from bayesnas_tf.data.spec import check_local_dataset
from bayesnas_tf.errors import BayesNASError
from bayesnas_tf.errors import PREEMPTED_EXIT_CODE, Preempted
from bayesnas_tf.spaces.registry import resolve_genotype

FLAGS = flags.FLAGS

# --- mode and run ---------------------------------------------------------
flags.DEFINE_enum("mode", None, list(config_lib.MODES), "What to run.")
flags.DEFINE_bool("summary_only", False,
                  "Build the model, print its parameter counts and exit.")
flags.DEFINE_string("model_dir", None, "Output and checkpoint directory.")
flags.DEFINE_enum("strategy", None, list(config_lib.STRATEGIES),
                  "tf.distribute strategy.")
flags.DEFINE_integer("logical_cpu_devices", None,
                     "Split the CPU into N logical devices (for --strategy=mirrored "
                     "without GPUs); 0 = off.")
flags.DEFINE_string("tpu", None,
                    "--strategy=tpu: TPU name or grpc://HOST:8470 (empty: this TPU VM).")
flags.DEFINE_string("worker_hosts", None,
                    "--strategy=multi_worker_mirrored without TF_CONFIG: "
                    "comma-separated HOST:PORT of every worker, the chief first.")
flags.DEFINE_integer("task_index", None,
                     "This worker's index in --worker_hosts.")
flags.DEFINE_integer("inter_op_threads", None,
                     "TensorFlow ops run at once (0: TF's default; unset: the "
                     "number of CPUs for cell networks on a CPU-only host).")
flags.DEFINE_integer("intra_op_threads", None,
                     "Threads inside one op (0: TF's default; unset: 1 for "
                     "cell networks on a CPU-only host).")
flags.DEFINE_integer("seed", None, "Random seed (weights, data order, prior init).")
flags.DEFINE_bool("deterministic", None, "Enable TF op determinism.")
flags.DEFINE_bool("jit_compile", None, "XLA-compile the step functions.")
flags.DEFINE_enum("dtype_policy", None, list(config_lib.DTYPE_POLICIES),
                  "Keras dtype policy: float32, mixed_bfloat16 (CPUs, TPUs, "
                  "recent GPUs) or mixed_float16 (GPUs; loss scaled). "
                  "Variables, the Hessian and the prior stay float32.")
flags.DEFINE_bool("recompute_cells", None,
                  "Search: recompute each cell's activations in the backward "
                  "pass instead of keeping them (less memory, same numbers, "
                  "about one more forward pass per step).")
flags.DEFINE_integer("checkpoint_every", None, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", None, "Checkpoints to keep.")
flags.DEFINE_bool("progress", None,
                  "Show progress bars when stdout is a terminal (otherwise "
                  "plain log lines every --log_every steps).")
flags.DEFINE_integer("log_every", None,
                     "Steps between progress log lines when no bar is shown "
                     "(0 = only at the end of each epoch/phase).")

# --- data -----------------------------------------------------------------
flags.DEFINE_string("dataset", None,
                    "digits (embedded, offline), a TFDS name (cifar10, ...), "
                    "npz:PATH or folder:PATH.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_bool("download", None, "Let TFDS download the dataset.")
flags.DEFINE_integer("batch_size", None, "Global batch size.")
flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size.")
flags.DEFINE_integer("crop_padding", None, "Padding of the random crop (0 = off).")
flags.DEFINE_bool("flip", None, "Random horizontal flips.")
flags.DEFINE_integer("cutout", None, "Cutout side in pixels (0 = off).")
flags.DEFINE_integer("max_train_examples", None,
                     "Use a seeded random N of the training examples (0 = all).")
flags.DEFINE_integer("max_eval_examples", None,
                     "Evaluate on a fixed random N test examples (0 = all).")

# --- supernet -------------------------------------------------------------
flags.DEFINE_string("search_space", None,
                    "Cell DAG (bayesnas, darts), for the proxyless search of "
                    "Sec. 6.2 a tree space in a PyramidNet (treecell_a, "
                    "proxyless), or nb201 (the NAS-Bench-201 cell).")
flags.DEFINE_integer("cells", None, "Number of cells (nb201: cells per stage).")
flags.DEFINE_integer("channels", None, "Channels C of the first cells.")
flags.DEFINE_list("primitives", None, "Candidate ops (default: all 7).")
flags.DEFINE_integer("stem_multiplier", None, "Stem channels = multiplier * C.")
flags.DEFINE_integer("depth_blocks", None,
                     "Tree spaces: PyramidNet blocks per stage B (3B blocks).")
flags.DEFINE_float("alpha", None, "Tree spaces: PyramidNet widening alpha.")
flags.DEFINE_integer("start_planes", None, "Tree spaces: PyramidNet stem width.")
flags.DEFINE_bool("bn_affine", None,
                  "nb201: whether the searched conv ops' BNs learn a scale and "
                  "an offset (default: no, as the benchmark's search cells).")
flags.DEFINE_float("gate_init", None,
                   "nb201: the op gates' w(0) (default 1/4, an edge starts as "
                   "the mean of its four ops; the paper's 1 overflows the "
                   "15-cell supernet). The prune threshold is read in units "
                   "of it.")

# --- search ---------------------------------------------------------------
flags.DEFINE_float("lambda_child", None, "lambda_w^o of the op gates (eq. 21).")
flags.DEFINE_float("lambda_origin", None,
                   "lambda of the edge gates w_all (default: lambda_child).")
flags.DEFINE_float("learning_rate", None, "SGD learning rate of the weights.")
flags.DEFINE_float("momentum", None, "SGD momentum of the weights.")
flags.DEFINE_float("weight_decay", None, "Weight decay (weights only).")
flags.DEFINE_float("arch_learning_rate", None, "SGD learning rate of the gates.")
flags.DEFINE_float("arch_momentum", None, "SGD momentum of the gates.")
flags.DEFINE_float("warmup_fraction", None,
                   "Fraction of the training split for the warm-up.")
flags.DEFINE_integer("warmup_epochs", None, "Warm-up epochs per iteration.")
flags.DEFINE_integer("search_epochs", None, "Joint epochs per iteration.")
flags.DEFINE_integer("iterations", None, "Search iterations T.")
flags.DEFINE_enum("hessian", None, list(config_lib.HESSIAN_METHODS),
                  "Gate Hessian estimator: ggn (exact Gauss-Newton diagonal), "
                  "ggn_mc (one sampled label), exact (one HVP per gate; small "
                  "models), diag_backprop (the paper's diagonal Hessian "
                  "back-propagation; one forward and one backward pass).")
flags.DEFINE_integer("hessian_batches", None, "Batches the Hessian averages over.")
flags.DEFINE_enum("dependency", None, list(config_lib.DEPENDENCIES),
                  "eq. 8 with predecessors (paper) or without (official).")
flags.DEFINE_enum("init", None, list(config_lib.INITS),
                  "gamma/omega init: ones (paper) or U(0,1) (official).")
flags.DEFINE_float("prune_threshold", None,
                   "Prune when gamma <= this (default 1/(2 pi e)).")
flags.DEFINE_float("grad_clip", None, "Global-norm clip of weight gradients (0 = off).")
flags.DEFINE_enum("op_score", None, list(config_lib.OP_SCORES),
                  "nb201: the posterior score that picks one kept op per edge: "
                  "gamma (the prior variance of eq. 8), snr (sum w^2 / C: the "
                  "gates' distance from zero in posterior standard "
                  "deviations; the nb201 default) or w (the gate norm).")
flags.DEFINE_string("benchmark_table", None,
                    "A CSV with an 'arch' column and an accuracy column (e.g. "
                    "NAS-Bench-201's): a finished search looks its cell up and "
                    "reports the accuracy and percentile.")

# --- retrain / transfer ----------------------------------------------------
flags.DEFINE_string("genotype", None,
                    "Built-in genotype (bayesnas_l0.01, bayesnas_l0.007, "
                    "bayesnas_l0.005, bayesnas_imagenet; PyramidNets "
                    "treecell_a_b18_a84, treecell_a_b18_a150, "
                    "proxyless_g_cifar), a genotype.json, or a search's "
                    "--model_dir.")
flags.DEFINE_integer("epochs", None, "Training epochs.")
flags.DEFINE_enum("lr_schedule", None, list(config_lib.LR_SCHEDULES),
                  "Per-epoch learning-rate schedule.")
flags.DEFINE_float("lr_decay", None, "Per-epoch factor of the exponential schedule.")
flags.DEFINE_enum("drop_path", None, list(config_lib.DROP_PATHS),
                  "official: per-op channel dropout; darts: drop-path.")
flags.DEFINE_float("drop_prob", None, "Final drop probability (ramped from 0).")
flags.DEFINE_bool("auxiliary", None, "Add the auxiliary head.")
flags.DEFINE_float("auxiliary_weight", None, "Auxiliary loss weight.")
flags.DEFINE_float("label_smoothing", None, "Label smoothing of the targets.")
flags.DEFINE_integer("image_size", None, "Crop size (0 = the dataset's own size).")
flags.DEFINE_string("warm_start", None,
                    "A retrain --model_dir whose cell weights start the cells.")

# --- compress ---------------------------------------------------------------
flags.DEFINE_enum("architecture", None, list(config_lib.COMPRESS_ARCHITECTURES),
                  "CNN trained from scratch when --base_model is not given.")
flags.DEFINE_string("base_model", None, "A trained Keras CNN (.keras) to compress.")
flags.DEFINE_float("vgg_width", None, "Channel multiplier of the VGG-like CNN.")
flags.DEFINE_list("groups", None, "Weight groups with a gamma: filter,channel,shape.")
flags.DEFINE_float("lambda_group", None, "Group-lasso strength of compression.")
flags.DEFINE_integer("pretrain_epochs", None, "Epochs to train from scratch.")
flags.DEFINE_float("pretrain_learning_rate", None,
                   "Learning rate of pretraining (default: --learning_rate).")
flags.DEFINE_integer("epochs_per_iteration", None,
                     "Re-weighted group-lasso epochs per compression round.")
flags.DEFINE_integer("finetune_epochs", None, "Epochs of the slim model.")

# --- study ------------------------------------------------------------------
flags.DEFINE_integer("study_seeds", None, "Searches of --mode=study (seeds seed, seed+1, ...).")
flags.DEFINE_integer("random_per_seed", None,
                     "Random genotypes per found one, with its ops per cell type.")
flags.DEFINE_list("study_reference", None,
                  "Released genotypes retrained as reference rows.")
flags.DEFINE_integer("retrain_cells", None, "Cells of every study retrain.")
flags.DEFINE_integer("retrain_channels", None, "Channels of every study retrain.")
flags.DEFINE_integer("retrain_epochs", None, "Epochs of every study retrain.")
flags.DEFINE_float("retrain_learning_rate", None, "Learning rate of every study retrain.")
flags.DEFINE_integer("retrain_batch_size", None, "Batch size of every study retrain.")
flags.DEFINE_list("study_parts", None,
                  "Merge the study.json of these study folders (run apart, e.g. one "
                  "--seed each) into --model_dir instead of running a study.")

# --- export -----------------------------------------------------------------
flags.DEFINE_bool("export", None, "Export a SavedModel at the end of training.")
flags.DEFINE_string("export_dir", None, "Root of the exported models.")
flags.DEFINE_string("model_name", None,
                    "Folder of the exported model (default: the genotype name).")

def build_config() -> config_lib.ExperimentConfig:
  """Flags -> frozen, validated config; unset flags keep the defaults of the
  mode (and of its dataset, e.g. the quick-start sizes of digits).

  `config_lib.config_from_values` maps the names to sections, the same
  mapping the Python API (`bayesnas_tf.search(...)`) uses.
  """
  values = {name: FLAGS[name].value for name in config_lib.option_names()
            if name in FLAGS and FLAGS[name].value is not None}
  return config_lib.config_from_values(FLAGS.mode, values)


class TensorFlowInfoFilter(std_logging.Filter):
  """Drops INFO (and DEBUG) records logged from inside the TensorFlow package.

  TensorFlow logs through absl's logger too (a line per checkpoint shard
  written, SavedModel asset paths), so it is told apart by the file that
  logged, not by the logger's name.
  """

  def __init__(self, package_dirs):
    super().__init__()
    self.package_dirs = tuple(os.path.join(d, "") for d in package_dirs)

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or not record.pathname.startswith(self.package_dirs))


def quiet_tensorflow_info() -> None:
  """Keeps TensorFlow's own INFO lines out of the job's log, where they would
  bury the progress lines; its warnings stay, and --verbosity=1 shows all."""
  if logging.get_verbosity() >= logging.DEBUG:
    return
  spec = importlib.util.find_spec("tensorflow")   # finds, does not import
  if spec is None or not spec.submodule_search_locations:
    return
  tf_filter = TensorFlowInfoFilter(spec.submodule_search_locations)
  logging.get_absl_logger().addFilter(tf_filter)
  std_logging.getLogger("tensorflow").addFilter(tf_filter)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_tensorflow_info()
  try:
    # The config is checked before TensorFlow loads (op_names.py), so a
    # mistaken flag is answered at once.
    config = build_config()
    # So are --genotype and a local --dataset path (TensorFlow-free checks).
    if config.mode in ("retrain", "transfer"):
      resolve_genotype(config.train.genotype)
    if config.mode != "export":
      check_local_dataset(config.data.dataset)
    from bayesnas_tf import modes  # pylint: disable=g-import-not-at-top
    if FLAGS.summary_only:
      for key, value in modes.summary(config).items():
        print(f"{key}: {value}")
      return 0
    result = modes.run(config, FLAGS.flags_into_string())
    text = modes.result_text(config, result)
    if text:
      print(text)
  except BayesNASError as error:
    # 1: input to correct; OUTPUT_WRITE_EXIT_CODE: an output could not be
    # written (errors.py).
    sys.stderr.write(f"error: {error}\n")
    return error.exit_code
  except Preempted as stop:
    sys.stderr.write(f"preempted: {stop}\n")
    return PREEMPTED_EXIT_CODE
  except KeyboardInterrupt:
    sys.stderr.write("interrupted; run the same command again to resume from "
                     "the last checkpoint\n")
    return 130
  return 0


def run() -> None:
  """The `bayesnas_tf` console script, `python main.py` and `python -m
  bayesnas_tf.cli`."""
  # --help lists the flags of the program's main module: make these its
  # own, whichever of the three started it.
  module = sys.argv[0] if __name__ == "__main__" else __name__
  for flag in FLAGS.get_flags_for_module(module):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  flags.mark_flag_as_required("mode")
  logging.set_verbosity(logging.INFO)
  app.run(main)


if __name__ == "__main__":
  run()
