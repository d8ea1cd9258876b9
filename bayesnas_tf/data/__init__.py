"""The data: datasets, their checks and the tf.data pipelines.

What lives here: in-memory datasets (digits, TFDS, npz, image folders), the
seeded splits, augmentation and pipelines (arrays.py); ImageNet-size data
streamed from disk (streaming.py); the `--dataset` forms and their path
checks, TensorFlow-free so main.py answers a bad path before TensorFlow
loads (spec.py).

What it may import: `bayesnas_tf.errors` and the packages below it (nn,
config, runtime); never the search spaces, the algorithm or the modes. This
file imports nothing, so `bayesnas_tf.data.spec` stays TensorFlow-free.
"""
