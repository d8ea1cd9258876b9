"""--strategy=multi_worker_mirrored with two worker processes on 127.0.0.1
against one process with the same global batch; --strategy=tpu and cluster
mistakes as one clear line.

Every worker runs the same global input pipeline and keeps its slice of each
batch, gradients and batch-norm sums are all-reduced, so two workers compute
what one process computes, up to the order of float32 sums. Tolerances
(measured on this machine's runs of these flags): gammas rtol 1e-4 (measured
max relative difference 1.2e-7), weights and optimizer momenta rtol 1e-5 +
atol 1e-6 (measured max |difference| 1.2e-7 over 284 variables, clipping
active). Runs are kept to one or two steps per phase: over more steps
ReLU/max-pool switches turn rounding into differences of the size of a step
(test_search.py says the same for mirrored; measured here: 7e-5 after four
retrain steps). Compress: test_preemption.py. The search test also runs
--strategy=mirrored over two logical CPU devices against the same process.
"""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from bayesnas_tf.spaces.dag.genotype import Genotype
from conftest import posterior_gammas, run_main
from scale_out_util import ProcessGroup, local_tf_configs, worker_hosts

# One warm-up step, one joint step, the ggn Hessian of one batch, the update.
SEARCH_FLAGS = (
    "--mode=search", "--dataset=digits", "--cells=3", "--channels=4",
    "--primitives=max,id", "--batch_size=32", "--max_train_examples=64",
    "--max_eval_examples=64", "--eval_batch_size=24", "--warmup_fraction=0.5",
    "--warmup_epochs=1", "--search_epochs=1", "--iterations=1",
    "--lambda_child=0.1", "--learning_rate=0.05", "--arch_learning_rate=0.05",
    "--crop_padding=1", "--cutout=4", "--hessian_batches=1", "--noprogress",
)
# Two steps of one epoch, the gradient clipped at both; evaluation in
# batches of 32 (the last one of 18, padded for two replicas).
RETRAIN_FLAGS = (
    "--mode=retrain", "--genotype=bayesnas_l0.01", "--dataset=digits",
    "--cells=3", "--channels=4", "--epochs=1", "--batch_size=32",
    "--max_train_examples=64", "--max_eval_examples=50", "--eval_batch_size=32",
    "--crop_padding=1", "--cutout=4", "--learning_rate=0.05", "--grad_clip=0.1",
    "--checkpoint_every=100", "--noprogress",
)


@pytest.fixture
def group(tmp_path):
  processes = ProcessGroup(tmp_path)
  yield processes
  processes.kill_all()


def _assert_only_the_chief_wrote(model_dir):
  leftovers = [p.name for p in pathlib.Path(model_dir).iterdir()
               if p.name.startswith("worker_tmp_")]
  assert not leftovers, leftovers


def test_search_on_two_workers_and_on_two_mirrored_replicas_matches_one_process(
    group, tmp_path):
  # Worker 1 gets SIGTERM once it has loaded the data: through
  # PreemptionCheckpointHandler both workers stop after the same step, the
  # chief saves, both exit with 42. Started again (new ports), they finish
  # as one uninterrupted process does. So does --strategy=mirrored over two
  # logical CPU devices in one process (the multi-GPU host): global-batch BN
  # statistics, all-reduced gradients and Hessian sums and the 1/replicas
  # share of the penalty and weight decay make each the same computation up
  # to the order of float32 sums.
  one, cluster_dir, mirrored = tmp_path / "one", tmp_path / "cluster", tmp_path / "mirrored"
  group.start("one", *SEARCH_FLAGS, f"--model_dir={one}")
  group.start("mirrored", *SEARCH_FLAGS, f"--model_dir={mirrored}",
              "--strategy=mirrored", "--logical_cpu_devices=2")
  configs = local_tf_configs(2)
  for index, tf_config in enumerate(configs):
    group.start(f"w{index}", *SEARCH_FLAGS, f"--model_dir={cluster_dir}",
                "--strategy=multi_worker_mirrored", env={"TF_CONFIG": tf_config})
  group.wait_for_text("w1", "Loaded dataset")
  group.sigterm("w1")
  assert group.wait("w0", "w1") == [42, 42], group.log("w0")[-3000:]
  for name in ("w0", "w1"):
    assert group.last_line(name).startswith("preempted: SIGTERM: stopped after"), (
        group.log(name)[-2000:])
  assert list((cluster_dir / "checkpoints").glob("ckpt-*.index"))
  _assert_only_the_chief_wrote(cluster_dir)

  for index, tf_config in enumerate(local_tf_configs(2)):
    group.start(f"resumed{index}", *SEARCH_FLAGS, f"--model_dir={cluster_dir}",
                "--strategy=multi_worker_mirrored", env={"TF_CONFIG": tf_config})
  assert group.wait("resumed0", "resumed1", "one", "mirrored") == [0, 0, 0, 0], (
      group.log("resumed0")[-3000:] + group.log("resumed1")[-3000:]
      + group.log("mirrored")[-3000:])
  assert "resumed from" in group.log("resumed0")
  assert "the chief writes the outputs" in group.log("resumed1")
  assert "MirroredStrategy over" in group.log("mirrored")
  gammas = posterior_gammas(one)
  assert len(np.unique(np.round(gammas, 3))) > 10      # not trivially equal
  for run in (cluster_dir, mirrored):
    np.testing.assert_allclose(posterior_gammas(run), gammas, rtol=1e-4, err_msg=run.name)
    assert Genotype.load(run / "genotype.json") == Genotype.load(
        one / "genotype.json")
  _assert_only_the_chief_wrote(cluster_dir)


def _checkpoint_values(model_dir):
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
  return {key: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if key.startswith(("model/", "optimizer/")) and "save_counter" not in key}


def test_two_workers_retrain_match_one_preempted_process(group, tmp_path):
  # The one process is preempted after step 1 and resumed; the two workers
  # run through, clipping the gradient at every step (Keras clips each
  # replica's gradient before its all-reduce: distribute.clip_summed_gradients).
  one, cluster_dir, exports = tmp_path / "one", tmp_path / "cluster", tmp_path / "exports"
  hosts = worker_hosts(2)
  for index in range(2):
    group.start(f"w{index}", *RETRAIN_FLAGS, f"--model_dir={cluster_dir}",
                f"--export_dir={exports}", "--strategy=multi_worker_mirrored",
                f"--worker_hosts={hosts}", f"--task_index={index}")
  group.start("one", *RETRAIN_FLAGS, f"--model_dir={one}", "--export=false")
  group.wait_for_text("one", "Loaded dataset")
  group.sigterm("one")
  assert group.wait("one") == [42], group.log("one")[-3000:]
  assert group.last_line("one").startswith(
      "preempted: SIGTERM: stopped after epoch 1, step 1 and saved a checkpoint")
  group.start("resumed", *RETRAIN_FLAGS, f"--model_dir={one}", "--export=false")
  assert group.wait("w0", "w1", "resumed") == [0, 0, 0], (
      group.log("w0")[-3000:] + group.log("w1")[-3000:] + group.log("resumed")[-3000:])
  assert "resumed from" in group.log("resumed")
  want, got = _checkpoint_values(one), _checkpoint_values(cluster_dir)
  assert sorted(got) == sorted(want) and len(want) > 100
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, cluster_dir)]
  assert metrics[0]["examples"] == metrics[1]["examples"] == 50
  assert metrics[1]["accuracy"] == metrics[0]["accuracy"]
  assert metrics[1]["loss"] == pytest.approx(metrics[0]["loss"], rel=1e-5)
  # The chief exported; the other worker's export went to its removed scratch.
  assert sorted(p.name for p in (exports / "bayesnas_l0.01").iterdir()) == ["1"]
  _assert_only_the_chief_wrote(cluster_dir)


QUICK_SEARCH = [f for f in SEARCH_FLAGS if not f.startswith("--noprogress")]


@pytest.mark.parametrize("args, env, message", [
    (("--strategy=tpu",), {}, "--strategy=tpu found no TPU on this machine"),
    (("--strategy=multi_worker_mirrored",), {"TF_CONFIG": "{cluster: 1"},
     "TF_CONFIG is not valid JSON"),
    (("--strategy=mirrored", "--logical_cpu_devices=2", "--batch_size=15"), {},
     "--batch_size=15 must be divisible by the 2 replicas"),
])
def test_bad_cluster_input_is_one_line(tmp_path, args, env, message):
  model_dir = tmp_path / "run"
  result = run_main(*QUICK_SEARCH, *args, f"--model_dir={model_dir}",
                    env=dict(env, CUDA_VISIBLE_DEVICES="-1"))
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, result.stderr[-2000:]
  assert not model_dir.exists()


@pytest.mark.parametrize("tf_config, message", [
    ("[]", "needs a 'cluster' and a 'task' object"),
    ('{"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker"}}',
     "lists the job(s) ps"),
    ('{"cluster": {"worker": ["h"]}, "task": {"type": "worker", "index": 0}}',
     "'h' is not HOST:PORT"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     "task.type 'chief' is not a job of its cluster (worker)"),
    ('{"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief"}}',
     "more than one chief"),
])
def test_malformed_tf_config_is_named(tf_config, message):
  from bayesnas_tf.runtime import cluster
  from bayesnas_tf.errors import ClusterError
  with pytest.raises(ClusterError, match=message.replace("(", r"\(").replace(")", r"\)")):
    cluster.parse_tf_config(tf_config)


def test_cluster_roles_and_worker_hosts(monkeypatch):
  from bayesnas_tf.runtime import cluster
  from bayesnas_tf.config import RuntimeConfig
  from bayesnas_tf.errors import ClusterError
  with_chief = cluster.parse_tf_config(json.dumps(
      {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
       "task": {"type": "worker", "index": 0}}))
  assert not with_chief.is_chief and with_chief.num_workers == 3
  monkeypatch.delenv("TF_CONFIG", raising=False)
  runtime = RuntimeConfig(strategy="multi_worker_mirrored",
                          worker_hosts="127.0.0.1:5000,127.0.0.1:5001", task_index=1)
  task = cluster.resolve_task(runtime)
  assert (task.name, task.is_chief, task.num_workers) == ("worker_1", False, 2)
  # --worker_hosts wrote TF_CONFIG, which the strategy's resolver reads.
  assert json.loads(cluster.os.environ["TF_CONFIG"])["task"]["index"] == 1
  assert cluster.resolve_task(runtime) == task          # the same twice
  monkeypatch.setenv("TF_CONFIG", cluster.tf_config_from_hosts("127.0.0.1:6000", 0))
  with pytest.raises(ClusterError, match="both TF_CONFIG and --worker_hosts"):
    cluster.resolve_task(runtime)
  with pytest.raises(ClusterError, match="--task_index=2 is not in 0..1"):
    cluster.tf_config_from_hosts("a:1,b:2", 2)
  assert cluster.resolve_task(RuntimeConfig(strategy="mirrored")) is None


def test_weight_decay_term_is_the_gradient_of_the_loss_form():
  """distribute.add_weight_decay against the gradient of 0.5 wd ||w||^2 added
  to the loss (the form it replaces), with a scaled loss and for a variable
  the loss does not reach (whose gradient is None and which still decays).
  The split over replicas is checked end to end by the 2-worker tests."""
  from bayesnas_tf.runtime import distribute  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  used = tf.Variable(rng.normal(size=(3, 4)).astype(np.float32))
  unused = tf.Variable(rng.normal(size=(5,)).astype(np.float32))
  x = tf.constant(rng.normal(size=(2, 3)).astype(np.float32))
  weight_decay, scale = 3e-2, 128.0
  variables = [used, unused]
  with tf.GradientTape(persistent=True) as tape:
    loss = tf.reduce_sum(tf.tanh(x @ used))
    with_decay = loss + 0.5 * weight_decay * tf.add_n(
        [tf.reduce_sum(tf.square(v)) for v in variables])
  expected = tape.gradient(with_decay, variables)
  bare = tape.gradient(loss, variables)
  assert bare[1] is None
  got = distribute.add_weight_decay(bare, variables, weight_decay)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-6, atol=1e-7)
  scaled = distribute.add_weight_decay(
      [g * scale for g in bare[:1]] + [None], variables, weight_decay,
      tf.constant(scale))
  for e, g in zip(expected, scaled):
    np.testing.assert_allclose(g.numpy() / scale, e.numpy(), rtol=1e-6, atol=1e-7)
  # No decay: the gradients pass unchanged (a None stays None).
  assert distribute.add_weight_decay(bare, variables, 0.0) is bare
