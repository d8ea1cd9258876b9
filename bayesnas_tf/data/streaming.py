"""Streaming image data for ImageNet-size training (--mode=transfer).

ImageNet does not fit in memory, so unlike `data.load_dataset` the examples
are read from disk each epoch: from TFDS `imagenet2012` (which needs the
manual download) or from a class-per-folder tree (`folder:PATH`, with
`PATH/train/<class>/*` and `PATH/test/<class>/*`).

Augmentation follows the ImageNet recipe of the official code
(ALGORITHM.md 5.3): training takes a random resized crop (scale 0.08-1,
aspect 3/4-4/3) and a random flip; evaluation resizes the shorter side to
size * 256/224 and takes the centre crop. Colour jitter is not applied.

As in `data.make_train_dataset`, an epoch is a pure function of
(seed, epoch): the example order is seeded and each example's augmentation
is keyed by its position, so skipping k batches resumes exactly; skipped
examples are never decoded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from bayesnas_tf.data import arrays as data_lib
from bayesnas_tf.data import spec as dataset_spec
from bayesnas_tf.data.spec import FOLDER_PREFIX
from bayesnas_tf.errors import DataError

IMAGENET = "imagenet2012"
# The usual ImageNet statistics (torchvision / the official code).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset:
  """Train and test splits read from disk.

  `train` / `test` hold either a (paths, labels) pair of numpy arrays
  (folder) or a TFDS builder split name (imagenet2012).
  """
  name: str
  class_names: Tuple[str, ...]
  image_size: int
  num_train: int
  num_test: int
  mean: np.ndarray
  std: np.ndarray
  folder_splits: Optional[dict] = None
  tfds_builder: Optional[object] = None

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  # --- raw (encoded image, label) streams ---------------------------------
  def _records(self, split: str, order: Optional[np.ndarray],
               shuffle_seed: Optional[int]):
    """(path or encoded bytes, label) records; files are read after skipping."""
    if self.folder_splits is not None:
      paths, labels = self.folder_splits[split]
      if order is not None:
        paths, labels = paths[order], labels[order]
      return tf.data.Dataset.from_tensor_slices((paths, labels))
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    dataset = self.tfds_builder.as_dataset(
        split="validation" if split == "test" else "train",
        shuffle_files=False, as_supervised=True,
        decoders={"image": tfds.decode.SkipDecoding()})
    if shuffle_seed is not None:
      # ImageNet cannot be permuted in memory: a seeded shuffle buffer.
      dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed,
                                reshuffle_each_iteration=False)
    return dataset

  def _decode(self, record):
    encoded = tf.io.read_file(record) if self.folder_splits is not None else record
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)

  def train(self, *, batch_size: int, seed: int, epoch: int,
            skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch of augmented (images, labels); deterministic per (seed, epoch)."""
    order = None
    shuffle_seed = None
    if self.folder_splits is not None:
      order = np.random.default_rng([seed, epoch]).permutation(self.num_train)
    else:
      shuffle_seed = int(np.random.default_rng([seed, epoch]).integers(2**31))
    key = tf.constant(data_lib.epoch_seed(seed, (epoch,)), tf.int64)
    size = self.image_size
    normalise = data_lib.normaliser(self.mean, self.std, 3)

    def load(position, record, label):
      image = self._decode(record)
      keys = tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(key, position), 2)
      begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), tf.zeros([1, 0, 4], tf.float32), seed=keys[0],
          min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
          area_range=(0.08, 1.0), max_attempts=10,
          use_image_if_no_bounding_boxes=True)
      image = tf.slice(image, begin, extent)
      image = tf.image.resize(image, [size, size], antialias=True)
      image = tf.image.stateless_random_flip_left_right(image, seed=keys[1])
      return normalise(image), tf.cast(label, tf.int32)

    dataset = self._records("train", order, shuffle_seed).enumerate()
    dataset = dataset.skip(skip_batches * batch_size)
    dataset = dataset.map(lambda i, pair: load(i, *pair),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def test(self, *, batch_size: int) -> tf.data.Dataset:
    """Resize the shorter side to size*256/224, centre crop, normalise."""
    size = self.image_size
    resize_to = int(round(size * 256 / 224))
    normalise = data_lib.normaliser(self.mean, self.std, 3)

    def load(record, label):
      image = self._decode(record)
      shape = tf.cast(tf.shape(image)[:2], tf.float32)
      scale = resize_to / tf.reduce_min(shape)
      new_shape = tf.cast(tf.round(shape * scale), tf.int32)
      image = tf.image.resize(image, new_shape, antialias=True)
      top = (new_shape[0] - size) // 2
      left = (new_shape[1] - size) // 2
      image = image[top:top + size, left:left + size, :]
      image = tf.ensure_shape(image, [size, size, 3])
      return normalise(image), tf.cast(label, tf.int32)

    dataset = self._records("test", None, None)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _list_folder(root: str, split: str, class_names=None):
  directory = os.path.join(root, split)
  if not os.path.isdir(directory):
    raise DataError(
        f"{directory} does not exist; folder:PATH needs PATH/train/<class>/ "
        "and PATH/test/<class>/ image folders")
  found = sorted(d for d in os.listdir(directory)
                 if os.path.isdir(os.path.join(directory, d)))
  classes = class_names or tuple(found)
  if class_names and tuple(found) != tuple(class_names):
    raise DataError(
        f"{directory} has classes {found}, the train split has "
        f"{list(class_names)}; both splits need the same class folders")
  paths, labels = [], []
  for label, name in enumerate(classes):
    for file in sorted(os.listdir(os.path.join(directory, name))):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(directory, name, file))
        labels.append(label)
  if not paths:
    raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {directory}")
  return tuple(classes), np.array(paths), np.array(labels, np.int64)


def _folder_statistics(paths: np.ndarray, size: int, samples: int = 256):
  """Per-channel mean/std of x/255 over a fixed sample of training images."""
  chosen = paths[np.random.default_rng(0).permutation(len(paths))[:samples]]
  total = np.zeros(3)
  squares = np.zeros(3)
  count = 0
  for path in chosen:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    image = tf.image.resize(image, [size, size]).numpy() / 255.0
    total += image.sum(axis=(0, 1))
    squares += np.square(image).sum(axis=(0, 1))
    count += size * size
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean**2, 1e-6))
  return mean.astype(np.float32), std.astype(np.float32)


def load_streaming_dataset(spec: str, data_dir: Optional[str], download: bool,
                           image_size: int) -> StreamingDataset:
  """`imagenet2012` (TFDS, manual download) or `folder:PATH`."""
  if image_size <= 0:
    raise DataError(f"--image_size must be positive for {spec}; the paper uses 224")
  if spec.startswith(FOLDER_PREFIX):
    root = dataset_spec.check_folder_root(spec[len(FOLDER_PREFIX):])
    classes, train_paths, train_labels = _list_folder(root, "train")
    _, test_paths, test_labels = _list_folder(root, "test", classes)
    mean, std = _folder_statistics(train_paths, image_size)
    logging.info("streaming %s: %d train / %d test images, %d classes, %dx%d crops",
                 spec, len(train_paths), len(test_paths), len(classes),
                 image_size, image_size)
    return StreamingDataset(
        spec, classes, image_size, len(train_paths), len(test_paths), mean, std,
        folder_splits={"train": (train_paths, train_labels),
                       "test": (test_paths, test_labels)})
  if spec != IMAGENET:
    raise DataError(
        f"--mode=transfer streams {IMAGENET} (TFDS) or folder:PATH; got "
        f"--dataset={spec!r}")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  manual = os.path.join(data_dir or os.path.expanduser("~/tensorflow_datasets"),
                        "downloads", "manual")
  try:
    builder = tfds.builder(IMAGENET, data_dir=data_dir)
    if download:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual))
    splits = builder.info.splits
    num_train, num_test = splits["train"].num_examples, splits["validation"].num_examples
    if not num_train:
      raise AssertionError("not prepared")
    builder.as_dataset(split="validation")  # Fails fast when not prepared.
  except Exception as error:  # pylint: disable=broad-except
    raise DataError(
        f"TFDS {IMAGENET} is not prepared in data_dir={data_dir or '~/tensorflow_datasets'} "
        f"({str(error).splitlines()[0][:160]}); ImageNet needs a manual download: "
        f"put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {manual} "
        "and run once with --download, or pass --dataset=folder:PATH") from None
  names = tuple(builder.info.features["label"].names)
  return StreamingDataset(
      IMAGENET, names, image_size, num_train, num_test,
      np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32),
      tfds_builder=builder)
