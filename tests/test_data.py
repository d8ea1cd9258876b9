"""Dataset loading and the deterministic, resumable tf.data pipelines."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
import time

import numpy as np
import pytest

from bayesnas_tf.data import arrays as data
from bayesnas_tf.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DIGITS_TRAIN_PER_CLASS = [142, 146, 142, 146, 145, 146, 145, 143, 139, 144]


def _shared(name: str) -> Path:
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data not present")
  path = SHARED_DATA / name
  if not path.exists():
    pytest.skip(f"../shared/data/{name} not present")
  return path


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
  return [(x.numpy(), y.numpy()) for x, y in dataset]


@pytest.fixture(scope="module")
def digits() -> data.ImageDataset:
  return data.load_dataset("digits")


@pytest.fixture(scope="module")
def images():
  """60 random 12x10 RGB images (non-square catches H/W mix-ups)."""
  rng = np.random.default_rng(123)
  x = rng.integers(1, 256, size=(60, 12, 10, 3), dtype=np.uint8)
  y = np.arange(60) % 7
  mean = x.reshape(-1, 3).mean(0) / 255.0
  std = x.reshape(-1, 3).std(0) / 255.0
  return x, y, mean.astype(np.float32), std.astype(np.float32)


# --- digits ------------------------------------------------------------------
def test_digits_shapes_counts_and_balance(digits):
  assert digits.name == "digits"
  assert digits.x_train.shape == (1438, 8, 8, 1)
  assert digits.x_test.shape == (359, 8, 8, 1)
  assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int64
  assert digits.y_test.dtype == np.int64
  assert digits.image_shape == (8, 8, 1) and digits.num_classes == 10
  assert digits.class_names == tuple(str(i) for i in range(10))
  assert digits.y_train.min() == 0 and digits.y_train.max() == 9
  assert digits.y_test.min() == 0 and digits.y_test.max() == 9
  train_counts = np.bincount(digits.y_train, minlength=10)
  total_counts = train_counts + np.bincount(digits.y_test, minlength=10)
  assert train_counts.tolist() == DIGITS_TRAIN_PER_CLASS
  np.testing.assert_array_equal(train_counts, np.round(0.8 * total_counts))
  # Pixels are round(v * 255 / 16) for v in 0..16, and both ends occur.
  allowed = np.round(np.arange(17) * 255 / 16).astype(np.uint8)
  assert np.isin(digits.x_train, allowed).all()
  assert digits.x_train.min() == 0 and digits.x_train.max() == 255


def test_digits_split_is_a_partition_of_the_csv(digits):
  x_all, y_all = data._read_digits_csv()  # pylint: disable=protected-access
  assert x_all.shape == (1797, 8, 8, 1)
  train, test = data._digits_split(y_all)  # pylint: disable=protected-access
  assert len(np.intersect1d(train, test)) == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])),
                                np.arange(1797))
  np.testing.assert_array_equal(digits.x_train, x_all[train])
  np.testing.assert_array_equal(digits.y_test, y_all[test])
  # Deterministic: a second load gives the same split.
  again = data.load_dataset("digits")
  np.testing.assert_array_equal(again.x_train, digits.x_train)
  np.testing.assert_array_equal(again.y_test, digits.y_test)
  # The CSV itself, read independently, agrees with the loader.
  import importlib.util  # pylint: disable=g-import-not-at-top
  location = importlib.util.find_spec("sklearn").submodule_search_locations[0]
  with gzip.open(os.path.join(location, "datasets", "data", "digits.csv.gz"),
                 "rt") as f:
    first = [float(v) for v in f.readline().split(",")]
  np.testing.assert_array_equal(
      x_all[0].ravel(), np.round(np.asarray(first[:64]) * 255 / 16))
  assert y_all[0] == int(first[64])


def test_mean_and_std(digits):
  pixels = digits.x_train.astype(np.float64) / 255.0
  assert digits.mean.dtype == np.float32 and digits.mean.shape == (1,)
  np.testing.assert_allclose(digits.mean, [pixels.mean()], rtol=1e-6)
  np.testing.assert_allclose(digits.std, [pixels.std()], rtol=1e-5)
  assert digits.mean is digits.mean  # computed once, cached
  constant = data.ImageDataset("c", np.full((4, 2, 2, 1), 7, np.uint8),
                               np.zeros(4, np.int64),
                               np.zeros((1, 2, 2, 1), np.uint8),
                               np.zeros(1, np.int64), ("a", "b"))
  assert constant.std[0] == pytest.approx(1e-3)


def test_dataset_metadata_without_loading(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("dataset_metadata loaded a known dataset")
  monkeypatch.setattr(data, "load_dataset", fail)
  assert data.dataset_metadata("digits") == ((8, 8, 1), 10)
  assert data.dataset_metadata("cifar10") == ((32, 32, 3), 10)
  assert data.dataset_metadata("cifar100") == ((32, 32, 3), 100)
  assert data.dataset_metadata("mnist") == ((28, 28, 1), 10)
  assert data.dataset_metadata("fashion_mnist") == ((28, 28, 1), 10)
  assert data.dataset_metadata("imagenet2012") == ((224, 224, 3), 1000)


# --- errors ------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["foo:bar", "not_a_tfds_dataset_xyz"])
def test_unknown_spec(spec, tmp_path):
  with pytest.raises(DataError, match="unknown --dataset.*npz:PATH.*folder:PATH"):
    data.load_dataset(spec, data_dir=str(tmp_path))


def test_tfds_offline_fails_fast(tmp_path):
  start = time.monotonic()
  with pytest.raises(DataError) as info:
    data.load_dataset("cifar10", data_dir=str(tmp_path), download=False)
  assert time.monotonic() - start < 15
  message = str(info.value)
  assert "'cifar10'" in message and str(tmp_path) in message
  assert "not prepared and --download is off" in message
  assert "--download=true" in message and "--dataset=digits" in message
  assert "\n" not in message


def test_imagenet_is_not_loaded_into_memory():
  with pytest.raises(DataError, match="streams from TFDS.*--mode=transfer"):
    data.load_dataset("imagenet2012")


def test_folder_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.load_dataset(f"folder:{tmp_path / 'missing'}")
  (tmp_path / "train" / "a").mkdir(parents=True)
  with pytest.raises(DataError, match="no test/ split"):
    data.load_dataset(f"folder:{tmp_path}")


def test_folder_rejects_mixed_sizes(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, label, size in (("train", "a", 8), ("train", "b", 6),
                             ("test", "a", 8), ("test", "b", 8)):
    folder = tmp_path / split / label
    folder.mkdir(parents=True)
    png = tf.io.encode_png(rng.integers(0, 256, (size, size, 3), np.uint8))
    (folder / "0.png").write_bytes(png.numpy())
  with pytest.raises(DataError, match=r"different sizes \(6x6x3, 8x8x3\)"):
    data.load_dataset(f"folder:{tmp_path}")


# --- npz ---------------------------------------------------------------------
def _npz_arrays():
  rng = np.random.default_rng(1)
  return {"x_train": rng.integers(0, 256, (6, 5, 4), np.uint8),
          "y_train": np.array([0, 1, 2, 0, 1, 2]),
          "x_test": rng.integers(0, 256, (3, 5, 4), np.uint8),
          "y_test": np.array([2, 1, 0], np.int32)}


def test_npz_round_trip(tmp_path):
  arrays = _npz_arrays()
  path = tmp_path / "d.npz"
  np.savez(path, class_names=np.array(["cat", "dog", "emu"]), **arrays)
  ds = data.load_dataset(f"npz:{path}")
  assert ds.x_train.shape == (6, 5, 4, 1) and ds.x_train.dtype == np.uint8
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])
  np.testing.assert_array_equal(ds.x_test[..., 0], arrays["x_test"])
  np.testing.assert_array_equal(ds.y_test, [2, 1, 0])
  assert ds.y_test.dtype == np.int64
  assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
  assert data.dataset_metadata(f"npz:{path}") == ((5, 4, 1), 3)
  # Without class_names the labels decide; floats in [0, 1] become uint8.
  floats = dict(arrays, x_train=arrays["x_train"] / 255.0,
                x_test=arrays["x_test"] / 255.0)
  np.savez(path, **floats)
  ds = data.load_dataset(f"npz:{path}")
  assert ds.class_names == ("0", "1", "2")
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])


@pytest.mark.parametrize("change, pattern", [
    ({"y_test": None}, r"lacks key\(s\) y_test"),
    ({"x_train": np.zeros((6, 5, 4), np.int16)}, "x_train has dtype int16"),
    ({"x_train": np.full((6, 5, 4), 2.0)}, "x_train has dtype float64"),
    ({"x_test": np.zeros((3, 20), np.uint8)}, r"x_test has shape \(3, 20\)"),
    ({"x_test": np.zeros((3, 5, 5), np.uint8)}, "x_train images are.*x_test"),
    ({"y_train": np.array([0, 1, 2, 0, 1])}, "y_train has 5 labels but x_train has 6"),
    ({"y_train": np.array([0, 1, 2, 0, 1, -1])}, r"labels range over -1\.\.2"),
    ({"y_test": np.array([0.0, 1.0, 2.0])}, "y_test has dtype float64"),
    ({"class_names": np.array(["a", "b"])}, r"labels range over 0\.\.2 but there are 2"),
])
def test_bad_npz(tmp_path, change, pattern):
  arrays = _npz_arrays()
  arrays.update(change)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=pattern):
    data.load_dataset(f"npz:{path}")


def test_missing_npz_file_or_folder(tmp_path):
  with pytest.raises(DataError, match="nope.npz' does not exist"):
    data.load_dataset(f"npz:{tmp_path / 'nope.npz'}")
  # The loaders check what main.py checks before TensorFlow loads.
  from bayesnas_tf.data import streaming as streaming_data  # pylint: disable=g-import-not-at-top
  for load in (lambda spec: data.load_dataset(spec),
               lambda spec: streaming_data.load_streaming_dataset(spec, None, False, 64)):
    with pytest.raises(DataError, match="image folder '.*nope' does not exist"):
      load(f"folder:{tmp_path / 'nope'}")


# --- splits ------------------------------------------------------------------
def test_split_indices():
  first, rest = data.split_indices(101, 0.5, seed=3)
  assert len(first) == 50 and len(rest) == 51  # round(50.5) = 50 (banker's)
  assert len(np.intersect1d(first, rest)) == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([first, rest])),
                                np.arange(101))
  again = data.split_indices(101, 0.5, seed=3)
  np.testing.assert_array_equal(first, again[0])
  np.testing.assert_array_equal(rest, again[1])
  other = data.split_indices(101, 0.5, seed=4)
  assert not np.array_equal(first, other[0])
  assert len(data.split_indices(10, 0.7, 0)[0]) == 7
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="first_fraction"):
      data.split_indices(10, bad, 0)


def test_num_batches():
  assert data.num_batches(10, 3) == 3
  assert data.num_batches(10, 3, drop_remainder=False) == 4
  assert data.num_batches(9, 3, drop_remainder=False) == 3
  assert data.num_batches(2, 3) == 0


# --- pipelines ---------------------------------------------------------------
FULL = data.AugmentConfig(crop_padding=4, flip=True, cutout=5)
NONE = data.AugmentConfig(crop_padding=0, flip=False, cutout=0)


def _train(images, augment, stream=(0, 1), skip=0, batch=8, seed=7, **kw):
  x, y, mean, std = images
  return data.make_train_dataset(
      x, y, batch_size=batch, seed=seed, stream=stream, mean=mean, std=std,
      augment=augment, skip_batches=skip, **kw)


def test_no_augmentation_is_normalised_permutation(images):
  x, y, mean, std = images
  batches = _batches(_train(images, NONE))
  assert len(batches) == 7  # 60 // 8, remainder dropped
  order = np.random.default_rng([7, 0, 1]).permutation(60)[:56]
  got_x = np.concatenate([b[0] for b in batches])
  got_y = np.concatenate([b[1] for b in batches])
  assert got_x.dtype == np.float32 and got_y.dtype == np.int32
  np.testing.assert_array_equal(got_y, y[order])
  np.testing.assert_allclose(got_x, (x[order] / 255.0 - mean) / std,
                             rtol=1e-5, atol=1e-5)


def test_skip_batches_resumes_exactly(images):
  full = _batches(_train(images, FULL))
  for skip in (1, 4, 7, 9):
    resumed = _batches(_train(images, FULL, skip=skip))
    assert len(resumed) == max(len(full) - skip, 0)
    for (xa, ya), (xb, yb) in zip(full[skip:], resumed):
      np.testing.assert_array_equal(xa, xb)
      np.testing.assert_array_equal(ya, yb)


def test_streams(images):
  a = np.concatenate([b[0] for b in _batches(_train(images, FULL, (0, 1)))])
  same = np.concatenate([b[0] for b in _batches(_train(images, FULL, (0, 1)))])
  other = np.concatenate([b[0] for b in _batches(_train(images, FULL, (0, 2)))])
  np.testing.assert_array_equal(a, same)
  assert a.shape == other.shape and not np.allclose(a, other)
  # The stream also changes the example order.
  ya = np.concatenate([b[1] for b in _batches(_train(images, FULL, (0, 1)))])
  yb = np.concatenate([b[1] for b in _batches(_train(images, FULL, (0, 2)))])
  assert not np.array_equal(ya, yb)


def test_cutout_zeroes_one_square(images):
  side = 5
  with_cut = _batches(_train(images, data.AugmentConfig(0, False, side)))
  without = _batches(_train(images, NONE))
  areas = set()
  for (xc, yc), (xn, yn) in zip(with_cut, without):
    np.testing.assert_array_equal(yc, yn)
    for img_c, img_n in zip(xc, xn):
      changed = np.any(img_c != img_n, axis=-1)  # (H, W)
      rows, cols = np.nonzero(changed)
      assert len(rows) > 0  # pixel values start at 1, so never already 0
      r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
      # The changed pixels fill exactly one axis-aligned rectangle ...
      assert changed.sum() == (r1 - r0) * (c1 - c0)
      # ... no larger than side x side, touching the border if smaller.
      assert r1 - r0 <= side and c1 - c0 <= side
      if r1 - r0 < side:
        assert r0 == 0 or r1 == img_c.shape[0]
      if c1 - c0 < side:
        assert c0 == 0 or c1 == img_c.shape[1]
      assert np.all(img_c[r0:r1, c0:c1] == 0.0)
      areas.add(changed.sum())
  assert side * side in areas and len(areas) > 1  # some clipped, some whole


def test_flip_and_crop(images):
  x, y, mean, std = images
  order = np.random.default_rng([7, 0, 1]).permutation(60)[:56]
  norm = (x[order] / 255.0 - mean) / std
  flipped = np.concatenate(
      [b[0] for b in _batches(_train(images, data.AugmentConfig(0, True, 0)))])
  assert flipped.shape == (56, 12, 10, 3)
  same = [np.allclose(f, n, atol=1e-5) for f, n in zip(flipped, norm)]
  mirror = [np.allclose(f, n[:, ::-1], atol=1e-5) for f, n in zip(flipped, norm)]
  assert all(s or m for s, m in zip(same, mirror))
  assert 10 < sum(mirror) < 46  # both outcomes occur

  pad = 2
  cropped = np.concatenate(
      [b[0] for b in _batches(_train(images, data.AugmentConfig(pad, False, 0)))])
  assert cropped.shape == (56, 12, 10, 3)
  padded = np.pad(x[order], [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  padded = (padded / 255.0 - mean) / std  # zero padding on raw pixels
  offsets = set()
  for img, ref in zip(cropped, padded):
    found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
             if np.allclose(img, ref[dy:dy + 12, dx:dx + 10], atol=1e-5)]
    assert found
    offsets.add(found[0])
  assert len(offsets) > 3


def test_keep_remainder(images):
  batches = _batches(_train(images, FULL, batch=25, drop_remainder=False))
  assert [len(b[1]) for b in batches] == [25, 25, 10]


def test_eval_dataset_keeps_partial_batch(images):
  x, y, mean, std = images
  batches = _batches(data.make_eval_dataset(x, y, batch_size=16, mean=mean,
                                            std=std))
  assert [len(b[1]) for b in batches] == [16, 16, 16, 12]
  got_x = np.concatenate([b[0] for b in batches])
  got_y = np.concatenate([b[1] for b in batches])
  np.testing.assert_array_equal(got_y, y)  # no shuffle
  assert got_y.dtype == np.int32 and got_x.dtype == np.float32
  np.testing.assert_allclose(got_x, (x / 255.0 - mean) / std, rtol=1e-5,
                             atol=1e-5)


def test_digits_pipeline(digits):
  ds = data.make_train_dataset(
      digits.x_train, digits.y_train, batch_size=64, seed=0, stream=(0,),
      mean=digits.mean, std=digits.std, augment=FULL)
  assert ds.element_spec[0].shape.as_list() == [64, 8, 8, 1]
  assert len(_batches(ds)) == data.num_batches(1438, 64) == 22


# --- shared real data --------------------------------------------------------
def test_shared_cifar10_subset():
  ds = data.load_dataset(f"npz:{_shared('cifar10_subset.npz')}")
  assert ds.x_train.shape == (10000, 32, 32, 3)
  assert ds.x_test.shape == (2000, 32, 32, 3)
  assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
  assert np.bincount(ds.y_train).tolist() == [1000] * 10
  assert np.bincount(ds.y_test).tolist() == [200] * 10
  # Close to the well-known CIFAR-10 channel statistics.
  np.testing.assert_allclose(ds.mean, [0.491, 0.482, 0.447], atol=0.015)
  np.testing.assert_allclose(ds.std, [0.247, 0.243, 0.261], atol=0.015)


def test_shared_mnist():
  ds = data.load_dataset(f"npz:{_shared('mnist.npz')}")
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
  assert np.bincount(ds.y_train)[:2].tolist() == [5923, 6742]
  assert np.bincount(ds.y_test)[:2].tolist() == [980, 1135]


def test_shared_cifar10_folder():
  ds = data.load_dataset(f"folder:{_shared('cifar10_folder')}")
  assert ds.x_train.shape == (2000, 32, 32, 3) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (500, 32, 32, 3)
  assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck")
  assert np.bincount(ds.y_train).tolist() == [200] * 10
  assert np.bincount(ds.y_test).tolist() == [50] * 10
  # Images are decoded, not blank, and the labels are not sorted by class.
  assert 80 < ds.x_train.mean() < 180
  assert not np.all(np.diff(ds.y_train) >= 0)
