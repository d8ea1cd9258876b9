"""Image datasets and deterministic, resumable `tf.data` input pipelines.

Loading (`load_dataset`) returns whole datasets as in-memory uint8 arrays:
the datasets BayesNAS searches on (CIFAR-10/100, MNIST, Fashion-MNIST, the
embedded scikit-learn digits) are small, so keeping them in memory is simpler
and faster than streaming, and it lets the pipelines index examples directly.

The training pipeline (`make_train_dataset`) is a pure function of
`(seed, stream)`: the example order is a seeded NumPy permutation and every
random augmentation is a stateless TF op seeded from
`(seed, stream, position in the epoch)`. Resuming mid-epoch with
`skip_batches=k` therefore yields exactly the batches a run that never
stopped would have seen from batch `k` on.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from bayesnas_tf.data import spec as dataset_spec
# Re-exported: callers read them as data.NPZ_PREFIX etc.
from bayesnas_tf.data.spec import EMBEDDED_DIGITS, FOLDER_PREFIX, NPZ_PREFIX  # pylint: disable=unused-import
from bayesnas_tf.errors import DataError

# (image_shape, num_classes) of the datasets whose metadata is known without
# loading them, so `--mode=summary` and model building need no data.
_KNOWN_METADATA: dict[str, tuple[tuple[int, int, int], int]] = {
    EMBEDDED_DIGITS: ((8, 8, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "imagenet2012": ((224, 224, 3), 1000),
}

_VALID_FORMS = ("'digits' (embedded, needs scikit-learn), a TFDS image "
                "classification name such as 'cifar10', 'cifar100', 'mnist' "
                "or 'fashion_mnist', 'npz:PATH' or 'folder:PATH'")

# Fraction of each digits class that goes to the training split.
_DIGITS_TRAIN_FRACTION = 0.8
_DIGITS_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """A whole image classification dataset held in memory.

  `eq=False` because element-wise array comparison makes `==` meaningless
  here; datasets compare by identity.

  Attributes:
    name: The spec the dataset was loaded from.
    x_train: uint8 images, shape (N, H, W, C).
    y_train: int64 labels in [0, num_classes), shape (N,).
    x_test: uint8 images, shape (M, H, W, C).
    y_test: int64 labels, shape (M,).
    class_names: One name per label index.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(int(d) for d in self.x_train.shape[1:])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @functools.cached_property
  def _channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
    # Per-channel histograms of the uint8 pixels give the exact mean and
    # standard deviation without a float copy of the whole training set
    # (1.2 GB in float64 for CIFAR-10).
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for c in range(self.x_train.shape[-1]):
      counts = np.bincount(self.x_train[..., c].ravel(), minlength=256)
      total = max(counts.sum(), 1)
      mean = float((values * counts).sum() / total)
      var = float((((values - mean) ** 2) * counts).sum() / total)
      means.append(mean)
      # A constant channel would otherwise divide by zero when normalising.
      stds.append(max(np.sqrt(var), 1e-3))
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)

  @property
  def mean(self) -> np.ndarray:
    """Per-channel float32 mean of x_train / 255, shape (C,)."""
    return self._channel_stats[0]

  @property
  def std(self) -> np.ndarray:
    """Per-channel float32 std of x_train / 255 (>= 1e-3), shape (C,)."""
    return self._channel_stats[1]


# --- loading -----------------------------------------------------------------
def dataset_metadata(spec: str) -> tuple[tuple[int, int, int], int]:
  """(image_shape, num_classes) of `spec`, without loading it when known.

  Args:
    spec: A dataset spec as accepted by `load_dataset`.

  Returns:
    ((H, W, C), num_classes). For `npz:`, `folder:` and TFDS names not in the
    built-in table the dataset is loaded (with the default TFDS data_dir and
    no download) to find out.
  """
  if spec in _KNOWN_METADATA:
    return _KNOWN_METADATA[spec]
  dataset = load_dataset(spec)
  return dataset.image_shape, dataset.num_classes


def load_dataset(spec: str, data_dir: str | None = None,
                 download: bool = False) -> ImageDataset:
  """Loads a whole image classification dataset into memory.

  Args:
    spec: One of `digits` (scikit-learn's bundled 8x8 handwritten digits),
      a TFDS image classification name (`cifar10`, `cifar100`, `mnist`,
      `fashion_mnist`, ...), `npz:PATH` or `folder:PATH`.
    data_dir: TFDS data directory (TFDS names only).
    download: Whether TFDS may download and prepare the dataset.

  Returns:
    The dataset as an `ImageDataset`.

  Raises:
    DataError: The spec is unknown, or the dataset is missing, cannot be
      loaded, or has the wrong shapes, dtypes or labels.
  """
  if not isinstance(spec, str) or not spec:
    raise DataError(f"empty or invalid --dataset {spec!r}; pass {_VALID_FORMS}")
  if spec == EMBEDDED_DIGITS:
    dataset = _load_digits()
  elif spec.startswith(NPZ_PREFIX):
    dataset = _load_npz(spec, spec[len(NPZ_PREFIX):])
  elif spec.startswith(FOLDER_PREFIX):
    dataset = _load_folder(spec, spec[len(FOLDER_PREFIX):])
  elif ":" in spec:
    raise DataError(f"unknown --dataset {spec!r}; pass {_VALID_FORMS}")
  else:
    dataset = _load_tfds(spec, data_dir, download)
  logging.info("Loaded dataset %s: %d train and %d test images of shape %s, "
               "%d classes", spec, len(dataset.y_train), len(dataset.y_test),
               dataset.image_shape, dataset.num_classes)
  return dataset


def _digits_csv_path() -> str:
  """Path of scikit-learn's bundled digits CSV, without importing sklearn."""
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(
        "the embedded 'digits' dataset ships inside scikit-learn, which is not "
        "installed; run `pip install scikit-learn` (or "
        "`pip install -e \".[embedded]\"`), or use --dataset=npz:PATH")
  for location in spec.submodule_search_locations:
    path = os.path.join(location, "datasets", "data", "digits.csv.gz")
    if os.path.exists(path):
      return path
  raise DataError(
      "scikit-learn is installed but its bundled datasets/data/digits.csv.gz "
      "is missing; reinstall it with `pip install --force-reinstall "
      "scikit-learn`, or use --dataset=npz:PATH")


def _digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (train, test) of the stratified digits split.

  Per class (in label order) one generator seeded with 0 permutes the rows of
  that class; the first round(0.8 * count) go to train, the rest to test.
  Both index arrays are returned sorted, so the splits keep the file's
  interleaved class order and any prefix of them is roughly class-balanced.
  """
  rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
  train, test = [], []
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    rows = rows[rng.permutation(len(rows))]
    cut = int(round(_DIGITS_TRAIN_FRACTION * len(rows)))
    train.append(rows[:cut])
    test.append(rows[cut:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _read_digits_csv() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as (uint8 images (N, 8, 8, 1), int64 labels (N,))."""
  path = _digits_csv_path()
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float64)
  if table.ndim != 2 or table.shape[1] != 65:
    raise DataError(f"{path} has shape {table.shape}, not (N, 65); reinstall "
                    "scikit-learn or use --dataset=npz:PATH")
  # The pixels are counts 0..16 of set bits in 4x4 blocks; scale to 0..255.
  pixels = np.round(table[:, :64] * 255.0 / 16.0).astype(np.uint8)
  return pixels.reshape(-1, 8, 8, 1), table[:, 64].astype(np.int64)


def _load_digits() -> ImageDataset:
  """scikit-learn's 8x8 handwritten digits with a fixed stratified split.

  The split gives 1438 training and 359 test images (per class 142, 146, 142,
  146, 145, 146, 145, 143, 139, 144 train of 178, 182, 177, 183, 181, 182, 181,
  179, 174, 180).
  """
  x, y = _read_digits_csv()
  train, test = _digits_split(y)
  return ImageDataset(EMBEDDED_DIGITS, x[train], y[train], x[test], y[test],
                      tuple(str(i) for i in range(10)))


def _load_tfds(name: str, data_dir: str | None, download: bool) -> ImageDataset:
  """A TFDS image classification dataset, both splits, as numpy arrays."""
  if name.split("/")[0].startswith("imagenet2012"):
    raise DataError(
        f"--dataset={name} is not loaded into memory: the ImageNet pipeline "
        "streams from TFDS and is used by --mode=transfer, not this loader; "
        "for search pass a small dataset such as cifar10, npz:PATH or digits")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = f"data_dir={data_dir or tfds.core.constants.DATA_DIR}"
  fix = ("pass --download=true with internet access, or use "
         "--dataset=npz:PATH or --dataset=digits")
  # Resolve the name first (no data needed): an unknown name then says which
  # forms are valid instead of listing the whole TFDS catalogue, and a
  # non-image dataset is refused before anything is read.
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    info = builder.info
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"unknown --dataset {name!r} (not a TFDS dataset); pass "
                    f"{_VALID_FORMS}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"could not open TFDS dataset {name!r} from {where}: "
                    f"{_one_line(e)}; {fix}") from e
  keys = info.supervised_keys
  if (not keys or len(keys) != 2 or not isinstance(keys[0], str)
      or not isinstance(info.features[keys[0]], tfds.features.Image)):
    raise DataError(f"TFDS dataset {name!r} is not an (image, label) "
                    f"classification dataset; pass {_VALID_FORMS}")
  try:
    # With download=False TFDS only looks in data_dir and never touches the
    # network, so an offline machine fails here at once.
    train, test = tfds.load(
        name, data_dir=data_dir, download=download, batch_size=-1,
        as_supervised=True, split=["train", "test"])
    x_train, y_train = tfds.as_numpy(train)
    x_test, y_test = tfds.as_numpy(test)
  except Exception as e:  # pylint: disable=broad-except
    prepared = builder.is_prepared() if hasattr(builder, "is_prepared") else True
    if not download and not prepared:
      reason = "not prepared and --download is off"
    else:
      reason = _one_line(e)
    raise DataError(f"could not load TFDS dataset {name!r} from {where}: "
                    f"{reason}; {fix}") from e
  names = getattr(info.features[keys[1]], "names", None)
  return _validated(name, x_train, y_train, x_test, y_test, names)


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def _load_npz(spec: str, path: str) -> ImageDataset:
  """An `.npz` with x_train, y_train, x_test, y_test and maybe class_names."""
  path = dataset_spec.check_npz_path(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in ("x_train", "y_train", "x_test", "y_test")
                 if k not in npz.files]
      if missing:
        raise DataError(
            f"npz file {path!r} lacks key(s) {', '.join(missing)} (it has "
            f"{', '.join(npz.files) or 'none'}); save it with x_train, "
            "y_train, x_test and y_test")
      arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
      names = None
      if "class_names" in npz.files:
        names = npz["class_names"]
  except DataError:
    raise
  except ValueError as e:
    # np.load refuses pickled (object) arrays; strings must be a str array.
    raise DataError(f"npz file {path!r} holds object arrays ({_one_line(e)}); "
                    "save numeric arrays and class_names as a str array "
                    "(np.array(names, dtype=str))") from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"could not read npz file {path!r}: {_one_line(e)}; pass "
                    "a file written by np.savez") from e
  if names is not None:
    names = np.asarray(names)
    if names.ndim != 1 or names.dtype.kind not in "US":
      raise DataError(f"npz file {path!r}: class_names must be a 1-D string "
                      f"array, got dtype {names.dtype} shape {names.shape}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
  return _validated(spec, arrays["x_train"], arrays["y_train"],
                    arrays["x_test"], arrays["y_test"], names, source=path)


def _load_folder(spec: str, root: str) -> ImageDataset:
  """Class-per-folder images `root/{train,test}/<class>/*.jpg` via TFDS."""
  root = dataset_spec.check_folder_root(root)
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(root, split)):
      raise DataError(f"image folder {root!r} has no {split}/ split; lay it "
                      f"out as {root}/train/<class>/*.jpg and "
                      f"{root}/test/<class>/*.jpg")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.folder_dataset.ImageFolder(root)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"could not read image folder {root!r}: {_one_line(e)}; "
                    "lay it out as PATH/{train,test}/<class>/*.jpg") from e
  class_names = list(builder.info.features["label"].names)
  splits = {}
  for split in ("train", "test"):
    if split not in builder.info.splits or not builder.info.splits[split].num_examples:
      raise DataError(f"image folder {root!r} has no images under {split}/; "
                      f"put them in {root}/{split}/<class>/*.jpg")
    images, labels, sizes = [], [], set()
    try:
      # One element at a time: a batch of mixed sizes would fail without
      # telling which sizes were found.
      ds = builder.as_dataset(split=split, shuffle_files=False,
                              as_supervised=True)
      for image, label in tfds.as_numpy(ds):
        images.append(image)
        labels.append(label)
        sizes.add(image.shape)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"could not decode the images in {root}/{split}: "
                      f"{_one_line(e)}; use JPEG or PNG files") from e
    splits[split] = (images, labels, sizes)
  all_sizes = splits["train"][2] | splits["test"][2]
  if len(all_sizes) > 1:
    listed = ", ".join("x".join(str(d) for d in s) for s in sorted(all_sizes))
    raise DataError(f"images in folder {root!r} have different sizes ({listed});"
                    " resize them all to one HxW")
  arrays = [np.stack(splits[s][i]) for s in ("train", "test") for i in (0, 1)]
  return _validated(spec, *arrays, class_names, source=root)


def _validated(name: str, x_train, y_train, x_test, y_test,
               class_names: Sequence[str] | None,
               source: str | None = None) -> ImageDataset:
  """Checks shapes, dtypes and labels and returns the `ImageDataset`."""
  where = f"dataset {source or name!r}"
  xs = {}
  for key, x in (("x_train", x_train), ("x_test", x_test)):
    x = np.asarray(x)
    if x.ndim == 3:  # grayscale (N, H, W)
      x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[1:]) == 0:
      raise DataError(f"{where}: {key} has shape {x.shape}; pass non-empty "
                      "images of shape (N, H, W) or (N, H, W, C)")
    if x.dtype == np.uint8:
      pass
    elif x.dtype.kind == "f" and x.size and np.isfinite(x).all() and (
        x.min() >= 0.0 and x.max() <= 1.0):
      # Floats in [0, 1] are unambiguous: scale back to 0..255.
      x = np.round(x * 255.0).astype(np.uint8)
    else:
      raise DataError(f"{where}: {key} has dtype {x.dtype}; pass uint8 pixels "
                      "0..255 (or floats in [0, 1])")
    xs[key] = x
  if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
    raise DataError(f"{where}: x_train images are {xs['x_train'].shape[1:]} but "
                    f"x_test images are {xs['x_test'].shape[1:]}; pass both "
                    "splits with the same (H, W, C)")
  ys = {}
  for key, y, x_key in (("y_train", y_train, "x_train"),
                        ("y_test", y_test, "x_test")):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # Keras-style (N, 1) labels
      y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
      raise DataError(f"{where}: {key} has dtype {y.dtype} shape {y.shape}; "
                      "pass integer class labels of shape (N,)")
    if len(y) != len(xs[x_key]):
      raise DataError(f"{where}: {key} has {len(y)} labels but {x_key} has "
                      f"{len(xs[x_key])} images; pass one label per image")
    ys[key] = y.astype(np.int64)
  low = min(ys["y_train"].min(), ys["y_test"].min())
  high = max(ys["y_train"].max(), ys["y_test"].max())
  if class_names is not None:
    class_names = tuple(str(n) for n in class_names)
    num_classes = len(class_names)
  else:
    num_classes = int(high) + 1
    class_names = tuple(str(i) for i in range(num_classes))
  if low < 0 or high >= num_classes:
    raise DataError(f"{where}: labels range over {low}..{high} but there are "
                    f"{num_classes} classes; pass labels 0..{num_classes - 1}")
  if num_classes < 2:
    raise DataError(f"{where}: only {num_classes} class; pass a dataset with "
                    "at least 2 classes")
  return ImageDataset(name, xs["x_train"], ys["y_train"], xs["x_test"],
                      ys["y_test"], class_names)


# --- splits and pipelines ----------------------------------------------------
def split_indices(num_examples: int, first_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits range(num_examples) with one seeded permutation.

  Args:
    num_examples: How many examples to split.
    first_fraction: Share of the first part, in (0, 1).
    seed: Seed of the permutation.

  Returns:
    (first, rest): the first round(first_fraction * num_examples) indices of
    the permutation and the remaining ones; disjoint, covering everything.

  Raises:
    ValueError: `first_fraction` is not in (0, 1) or `num_examples` < 0.
  """
  if not 0.0 < first_fraction < 1.0:
    raise ValueError(f"first_fraction must be in (0, 1), got {first_fraction}")
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}")
  order = np.random.default_rng(seed).permutation(num_examples)
  cut = int(round(first_fraction * num_examples))
  return order[:cut], order[cut:]


def subset(x: np.ndarray, y: np.ndarray, size: int,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random subset of `size` examples (all of them when size is 0).

  Random rather than the first `size`: some files (e.g. class-balanced
  subsets) are sorted by class, and their first examples are one class.
  """
  if not size or size >= len(x):
    return x, y
  keep = np.sort(np.random.default_rng([seed, 3]).permutation(len(x))[:size])
  return x[keep], y[keep]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation, as in the official DARTS/BayesNAS code.

  Attributes:
    crop_padding: Zero-pad by this many pixels, then randomly crop back to
      HxW (0 = off).
    flip: Random horizontal flip.
    cutout: Side in pixels of the zeroed cutout square (0 = off).
  """
  crop_padding: int = 4
  flip: bool = True
  cutout: int = 0


def num_batches(num_examples: int, batch_size: int,
                drop_remainder: bool = True) -> int:
  """Batches in one epoch of `num_examples`."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def _check_arrays(x, y, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 4 or x.dtype != np.uint8:
    raise ValueError(f"x must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
  if y.shape != (len(x),):
    raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return x, y


def normaliser(mean, std, channels: int):
  mean = np.asarray(mean, np.float32).reshape(-1)
  std = np.asarray(std, np.float32).reshape(-1)
  if mean.shape != (channels,) or std.shape != (channels,):
    raise ValueError(f"mean and std need {channels} channels, got "
                     f"{mean.shape} and {std.shape}")
  mean_t, std_t = tf.constant(mean), tf.constant(std)

  def normalise(images):
    return (tf.cast(images, tf.float32) / 255.0 - mean_t) / std_t
  return normalise


def epoch_seed(seed: int, stream: Sequence[int]) -> np.ndarray:
  """A [2] int64 stateless-op key for one (seed, stream) epoch.

  A spawned child of the SeedSequence behind the example order, so the
  augmentation randomness is independent of the permutation.
  """
  seq = np.random.SeedSequence([int(seed), *(int(s) for s in stream)],
                               spawn_key=(1,))
  return seq.generate_state(2, np.uint32).astype(np.int64)


def _cutout(image: tf.Tensor, side: int, seed: tf.Tensor) -> tf.Tensor:
  """Zeroes a side x side square whose centre is uniform over the image.

  As in the official code the square may stick out of the image and is
  clipped at the border, so near the edges fewer pixels are zeroed.
  """
  height, width = image.shape[0], image.shape[1]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  cy = tf.random.stateless_uniform([], seeds[0], 0, height, dtype=tf.int32)
  cx = tf.random.stateless_uniform([], seeds[1], 0, width, dtype=tf.int32)
  y0, x0 = cy - side // 2, cx - side // 2
  rows = tf.range(height)
  cols = tf.range(width)
  in_rows = (rows >= y0) & (rows < y0 + side)
  in_cols = (cols >= x0) & (cols < x0 + side)
  mask = in_rows[:, None] & in_cols[None, :]
  return tf.where(mask[:, :, None], tf.zeros_like(image), image)


def make_train_dataset(x, y, *, batch_size: int, seed: int,
                       stream: tuple[int, ...], mean, std,
                       augment: AugmentConfig, skip_batches: int = 0,
                       drop_remainder: bool = True) -> tf.data.Dataset:
  """One shuffled, augmented training epoch, fully determined by the seeds.

  Example order is `np.random.default_rng([seed, *stream]).permutation(n)`.
  Each example's augmentation is seeded from (seed, stream, its position in
  the epoch), so `skip_batches=k` yields exactly batches k, k+1, ... of the
  un-skipped epoch; skipped examples are never decoded or augmented.

  Order of operations (official PyTorch code): zero-pad the raw pixels by
  `crop_padding` and randomly crop back to HxW, random horizontal flip,
  normalise `(x / 255 - mean) / std`, then cutout with zeros.

  Args:
    x: uint8 images (N, H, W, C).
    y: Integer labels (N,).
    batch_size: Examples per batch.
    seed: Run seed.
    stream: Further integers (e.g. iteration, phase, epoch) that select this
      epoch's randomness.
    mean: Per-channel mean of x / 255, shape (C,).
    std: Per-channel std of x / 255, shape (C,).
    augment: Which augmentations to apply.
    skip_batches: Batches to skip at the start (for resuming mid-epoch).
    drop_remainder: Drop the last partial batch (static shapes for TPU/XLA).

  Returns:
    A dataset of (float32 images (B, H, W, C), int32 labels (B,)).
  """
  x, y = _check_arrays(x, y, batch_size)
  if skip_batches < 0:
    raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
  n, height, width, channels = x.shape
  order = np.random.default_rng([int(seed), *(int(s) for s in stream)]
                                ).permutation(n)
  normalise = normaliser(mean, std, channels)
  images = tf.constant(x)
  labels = tf.constant(y.astype(np.int32))
  order_t = tf.constant(order, tf.int64)
  epoch_key = tf.constant(epoch_seed(seed, stream), tf.int64)
  pad, flip, side = int(augment.crop_padding), bool(augment.flip), int(augment.cutout)

  def load(position):
    index = order_t[position]
    image = images[index]
    keys = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(epoch_key, position), 3)
    if pad > 0:
      image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
      image = tf.image.stateless_random_crop(
          image, [height, width, channels], seed=keys[0])
    if flip:
      image = tf.image.stateless_random_flip_left_right(image, seed=keys[1])
    image = normalise(image)
    if side > 0:
      image = _cutout(image, side, keys[2])
    return image, labels[index]

  # Positions, not examples, flow through the pipeline: skipping happens on
  # cheap integers before any gather or augmentation.
  start = min(skip_batches * batch_size, n)
  dataset = tf.data.Dataset.range(start, n)
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(x, y, *, batch_size: int, mean,
                      std) -> tf.data.Dataset:
  """Normalised, unshuffled evaluation batches, keeping the last partial one.

  Args:
    x: uint8 images (N, H, W, C).
    y: Integer labels (N,).
    batch_size: Examples per batch.
    mean: Per-channel mean of x / 255, shape (C,).
    std: Per-channel std of x / 255, shape (C,).

  Returns:
    A dataset of (float32 images (B, H, W, C), int32 labels (B,)).
  """
  x, y = _check_arrays(x, y, batch_size)
  normalise = normaliser(mean, std, x.shape[-1])
  images = tf.constant(x)
  labels = tf.constant(y.astype(np.int32))

  def load(indices):
    return normalise(tf.gather(images, indices)), tf.gather(labels, indices)

  # Whole batches of indices are gathered at once: no per-example work.
  dataset = tf.data.Dataset.range(len(x)).batch(batch_size)
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayTrainingData:
  """An in-memory `ImageDataset` behind the interface of the trainer.

  The same `train(...)` / `test(...)` interface as
  `streaming.StreamingDataset`, so one trainer serves both.
  """
  dataset: ImageDataset
  augment: AugmentConfig
  max_train_examples: int = 0
  max_eval_examples: int = 0
  seed: int = 0

  def __post_init__(self):
    x, y = subset(self.dataset.x_train, self.dataset.y_train,
                  self.max_train_examples, self.seed)
    x_test, y_test = subset(self.dataset.x_test, self.dataset.y_test,
                            self.max_eval_examples, 0)
    object.__setattr__(self, "_train", (x, y))
    object.__setattr__(self, "_test", (x_test, y_test))

  name = property(lambda self: self.dataset.name)
  class_names = property(lambda self: self.dataset.class_names)
  num_classes = property(lambda self: self.dataset.num_classes)
  image_shape = property(lambda self: self.dataset.image_shape)
  mean = property(lambda self: self.dataset.mean)
  std = property(lambda self: self.dataset.std)
  num_train = property(lambda self: len(self._train[0]))
  num_test = property(lambda self: len(self._test[0]))

  def train(self, *, batch_size: int, seed: int, epoch: int,
            skip_batches: int = 0) -> tf.data.Dataset:
    x, y = self._train
    return make_train_dataset(
        x, y, batch_size=batch_size, seed=seed, stream=(epoch,),
        mean=self.mean, std=self.std, augment=self.augment,
        skip_batches=skip_batches)

  def test(self, *, batch_size: int) -> tf.data.Dataset:
    x, y = self._test
    return make_eval_dataset(x, y, batch_size=batch_size, mean=self.mean,
                             std=self.std)
