"""SavedModel export for TF Serving: <export_dir>/<model_name>/<version>/.

TF Serving watches `<export_dir>/<model_name>` and serves the largest
integer version, so every export takes the next integer and never touches an
existing version. The SavedModel is written to a temporary folder beside
the versions and renamed into place, so a failed or interrupted export never
leaves a half-written version for the server to pick up.

The `serving_default` signature takes a batch of uint8 images of any batch
size (the model normalises inside) and returns `probabilities` (float32,
(B, classes)) and `classes` (int64, (B,)). The genotype and the class names
are stored as assets. The SavedModel needs only TensorFlow to load: the
functions are traced graphs over the model's variables.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from bayesnas_tf.errors import OutputWriteError
from bayesnas_tf.errors import failure_reason

SIGNATURE = "serving_default"


def check_writable(export_dir: str) -> None:
  """Fails early (before any training) when `export_dir` is not writable."""
  try:
    os.makedirs(export_dir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=export_dir, prefix=".write_test_")
    probe.close()
  except OSError as error:
    raise OutputWriteError(
        f"--export_dir={export_dir}", failure_reason(error),
        "pass a writable --export_dir or --export=false") from None


def existing_versions(model_root: str) -> list:
  if not os.path.isdir(model_root):
    return []
  return sorted(int(name) for name in os.listdir(model_root)
                if re.fullmatch(r"\d+", name))


class ServingModule(tf.Module):
  """uint8 images -> normalised floats -> model -> probabilities, classes."""

  def __init__(self, model: keras.Model, image_shape: Sequence[int], mean, std,
               asset_paths: Sequence[str]):
    super().__init__(name="serving")
    # Keras 3 keeps sublayers in lists TensorFlow does not follow, so the
    # variables are tracked here explicitly; the model itself is only
    # captured by the traced function. The raw tf.Variables (not the Keras
    # wrappers) are tracked, or the TF1 loader of `saved_model_cli run`
    # cannot find them.
    self.model_variables = [v.value for v in model.variables]
    self.assets = [tf.saved_model.Asset(path) for path in asset_paths]
    mean = tf.constant(np.asarray(mean, np.float32))
    std = tf.constant(np.asarray(std, np.float32))
    shape = [None] + [int(d) for d in image_shape]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8, name="images")])
    def serve(images):
      x = (tf.cast(images, tf.float32) / 255.0 - mean) / std
      logits = tf.cast(model(x, training=False), tf.float32)
      return {"probabilities": tf.nn.softmax(logits),
              "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

    self.serve = serve


def export_saved_model(model: keras.Model, *, export_dir: str, model_name: str,
                       image_shape: Sequence[int], mean, std,
                       class_names: Sequence[str],
                       genotype_json: Optional[str] = None) -> str:
  """Writes the next version of `model_name`; returns its path."""
  check_writable(export_dir)
  model_root = os.path.join(export_dir, model_name)
  try:
    os.makedirs(model_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export_", dir=model_root)
  except OSError as error:
    raise OutputWriteError(model_root, failure_reason(error),
                           "pass a writable --export_dir") from None
  try:
    assets_source = os.path.join(staging, "assets_source")
    os.makedirs(assets_source)
    asset_paths = [os.path.join(assets_source, "class_names.txt")]
    with open(asset_paths[0], "w", encoding="utf-8") as f:
      f.write("\n".join(class_names) + "\n")
    if genotype_json is not None:
      asset_paths.append(os.path.join(assets_source, "genotype.json"))
      with open(asset_paths[-1], "w", encoding="utf-8") as f:
        f.write(genotype_json)
    module = ServingModule(model, image_shape, mean, std, asset_paths)
    saved = os.path.join(staging, "saved_model")
    tf.saved_model.save(module, saved, signatures={SIGNATURE: module.serve})
    # Rename into the next free version; os.rename fails rather than
    # overwrite if another export took the number meanwhile.
    while True:
      version = (existing_versions(model_root) or [0])[-1] + 1
      target = os.path.join(model_root, str(version))
      try:
        os.rename(saved, target)
        break
      except OSError:
        if not os.path.exists(target):
          raise
  except (OSError, tf.errors.OpError) as error:
    # The staging folder goes (finally); existing versions were never
    # touched, and the trained run's checkpoint stays for --mode=export.
    raise OutputWriteError(
        model_root, failure_reason(error),
        "make room or pass a writable --export_dir, then export the trained "
        "run with --mode=export") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  logging.info("exported SavedModel version %d to %s", version, target)
  return target
