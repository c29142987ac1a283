"""Tests for the image data sets (bdbounds.data.images, image_dataset and tfds_images).

The TFDS tests read real ``array_record`` data sets written into a temporary
directory by TFDS's own builders (the registered ``mnist``, ``cifar10`` and
``celeb_a`` classes with their example generators replaced by a few fake
images), so the whole read path runs as in production: ``tfds.builder``,
``is_prepared``, ``as_data_source``, batched ``__getitems__`` and decoding.
Writing and reading both work without TensorFlow (images are handed to TFDS as
PIL images, which it encodes with PIL). ``tfds.testing.mock_data`` is not used:
it points every builder at a data directory of its own, so a loader that first
checks the data set is prepared (as this one must, to fail with the prepare
command) sees nothing there, and in TFDS 4.9 its array_record mock stores
``__getitems__`` without binding ``self``, so batched reads fail.
"""

import json
import shutil
import sys

import numpy as np
import pytest

from bdbounds.data import (
  IMAGE_DATASETS,
  DatasetNotPreparedError,
  ImageDataset,
  get_image_dataset,
)
from bdbounds.data import images
from bdbounds.data.image_dataset import epoch_order

NUM_FAKE = {"mnist": (10, 4), "cifar10": (20, 6), "celeb_a": (6, 4)}  # (train, test)


@pytest.fixture(scope="module")
def digits():
  return get_image_dataset("digits")


@pytest.fixture(scope="module")
def digits_flip():
  return get_image_dataset("digits", flip=True)


# ----------------------------------------------------------------------------
# Digits.


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes_range_and_split(size):
  ds = get_image_dataset("digits", image_size=size)
  assert isinstance(ds, ImageDataset)
  assert ds.name == "digits"
  assert ds.image_shape == (size, size, 1)
  assert (ds.num_train, ds.num_test) == (1497, 300)
  test = ds.test_images()
  batch = ds.train_batch(0, 0, 32, num_batches=2)
  assert test.shape == (300, size, size, 1) and test.dtype == np.float32
  assert batch.shape == (2, 32, size, size, 1) and batch.dtype == np.float32
  for x in (test, batch):
    assert x.min() >= -1.0 and x.max() <= 1.0
  assert ds.test_images(5).shape == (5, size, size, 1)
  np.testing.assert_array_equal(ds.test_images(5), test[:5])
  assert ds.test_images(0).shape == (0, size, size, 1)


def test_digits_split_is_the_documented_permutation(digits):
  import sklearn.datasets

  raw = sklearn.datasets.load_digits().images
  perm = np.random.default_rng(0).permutation(len(raw))
  expected = raw / 8.0 - 1.0
  np.testing.assert_array_equal(digits.test_images()[..., 0], expected[perm[:300]])
  np.testing.assert_array_equal(digits.read_train(np.arange(1497))[..., 0], expected[perm[300:]])


def test_digits_upsampling_keeps_the_glyph(digits):
  # Bilinear upsampling, not padding: 2x2 block means of the 16x16 image track the 8x8 pixels.
  big = get_image_dataset("digits", image_size=16).test_images(50)[..., 0]
  pooled = big.reshape(50, 8, 2, 8, 2).mean(axis=(2, 4))
  small = digits.test_images(50)[..., 0]
  assert np.corrcoef(pooled.ravel(), small.ravel())[0, 1] > 0.95


def test_test_images_rejects_too_many(digits):
  with pytest.raises(ValueError, match="only 300"):
    digits.test_images(301)


# ----------------------------------------------------------------------------
# The batch function: determinism, epochs, resumption, processes, flips.


def test_batches_are_a_pure_function_of_seed_and_step(digits):
  a = digits.train_batch(3, 7, 16)
  epoch_order.cache_clear()
  np.testing.assert_array_equal(get_image_dataset("digits").train_batch(3, 7, 16), a)
  assert not np.array_equal(digits.train_batch(3, 8, 16), a)
  assert not np.array_equal(digits.train_batch(4, 7, 16), a)


def test_an_epoch_covers_every_training_example_once(digits):
  n = digits.num_train
  # 100 does not divide 1497, so batches straddle the epoch boundaries.
  idx = np.concatenate([digits.train_indices(5, step, 100)[0].ravel() for step in range(30)])
  np.testing.assert_array_equal(np.sort(idx[:n]), np.arange(n))
  np.testing.assert_array_equal(np.sort(idx[n : 2 * n]), np.arange(n))
  assert not np.array_equal(idx[:n], idx[n : 2 * n])  # a fresh order each epoch
  # The straddling batch reads the examples its indices name.
  straddle = n // 100
  np.testing.assert_array_equal(
    digits.train_batch(5, straddle, 100)[0],
    digits.read_train(digits.train_indices(5, straddle, 100)[0][0]),
  )


def test_num_batches_lays_batches_end_to_end(digits):
  # Batch b of step s is the single batch at step s * num_batches + b.
  multi = digits.train_indices(1, 4, 64, num_batches=3)[0]
  single = [digits.train_indices(1, 4 * 3 + b, 64)[0][0] for b in range(3)]
  np.testing.assert_array_equal(multi, np.stack(single))


def test_resuming_at_a_step_repeats_the_uninterrupted_run(digits_flip):
  uninterrupted = [digits_flip.train_batch(2, step, 128, num_batches=3) for step in range(12)]
  epoch_order.cache_clear()  # a restarted process starts with an empty cache
  resumed = get_image_dataset("digits", flip=True)
  for step in range(7, 12):
    np.testing.assert_array_equal(resumed.train_batch(2, step, 128, num_batches=3), uninterrupted[step])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(digits_flip, process_count):
  whole = digits_flip.train_batch(9, 11, 96, num_batches=2)
  parts = [
    digits_flip.train_batch(
      9, 11, 96, num_batches=2, process_index=i, process_count=process_count
    )
    for i in range(process_count)
  ]
  assert parts[0].shape == (2, 96 // process_count, 8, 8, 1)
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_flips_are_deterministic_horizontal_mirrors(digits, digits_flip):
  plain = digits.train_batch(0, 3, 256)[0]
  flipped = digits_flip.train_batch(0, 3, 256)[0]
  idx, flips = digits_flip.train_indices(0, 3, 256)
  flips = flips[0]
  assert not digits.train_indices(0, 3, 256)[1].any()
  np.testing.assert_array_equal(idx, digits.train_indices(0, 3, 256)[0])  # same order
  assert 0.3 < flips.mean() < 0.7
  np.testing.assert_array_equal(flipped[flips], plain[flips][:, :, ::-1])
  np.testing.assert_array_equal(flipped[~flips], plain[~flips])
  assert not np.array_equal(flipped[flips], plain[flips])  # digits are not symmetric
  np.testing.assert_array_equal(digits_flip.train_batch(0, 3, 256)[0], flipped)


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(batch_size=10, process_count=3), ValueError, "divisible by process_count=3"),
    (dict(batch_size=12, process_count=3, process_index=3), ValueError, "process_index=3"),
    (dict(batch_size=0), ValueError, "batch_size must be positive"),
    (dict(batch_size=8, num_batches=0), ValueError, "num_batches must be positive"),
    (dict(batch_size=8, step=-1), ValueError, "step must be non-negative"),
    (dict(batch_size=8, seed=-2), ValueError, "seed must be non-negative"),
    (dict(batch_size=8, step=1.5), TypeError, "step must be an integer"),
  ],
)
def test_bad_batch_arguments_raise(digits, kwargs, error, match):
  kwargs = dict(seed=0, step=0) | kwargs
  with pytest.raises(error, match=match):
    digits.train_batch(**kwargs)


def test_unknown_dataset_lists_the_choices():
  with pytest.raises(ValueError, match="digits, mnist, cifar10, celeba64"):
    get_image_dataset("imagenet")
  assert IMAGE_DATASETS == ("digits", "mnist", "cifar10", "celeba64")


@pytest.mark.parametrize("name, size", [("digits", 12), ("mnist", 64), ("cifar10", 64), ("celeba64", 200)])
def test_unsupported_image_size_raises(name, size):
  with pytest.raises(ValueError, match=f"image_size={size} is not supported for {name}"):
    get_image_dataset(name, image_size=size)


# ----------------------------------------------------------------------------
# CelebA preprocessing on synthetic images (no TFDS needed).


def test_celeba_crop_is_the_central_140_window():
  image = np.zeros((218, 178, 3), np.uint8)
  image[39:179, 19:159] = 255  # exactly the crop: top (218-140)//2, left (178-140)//2
  out = images.preprocess_celeba(image)
  assert out.shape == (64, 64, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, np.ones_like(out))
  # One row less of the window shows up as a darker top edge.
  image[39] = 0
  assert images.preprocess_celeba(image)[0].max() < 1.0


def test_celeba_resize_keeps_orientation():
  image = np.zeros((218, 178, 3), np.uint8)
  image[:, :89, 0] = 200  # left half red
  image[:109, :, 2] = 100  # top half blue
  out = images.preprocess_celeba(image, image_size=32)
  assert out.shape == (32, 32, 3)
  assert out[:, :8, 0].min() > 0.5 and out[:, -8:, 0].max() == -1.0
  assert out[:8, :, 2].min() > -0.3 and out[-8:, :, 2].max() == -1.0
  assert out.min() >= -1.0 and out.max() <= 1.0


# ----------------------------------------------------------------------------
# TFDS data sets, read from tiny array_record data sets built here.


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip(
    "tensorflow_datasets",
    reason='TFDS readers need the optional extra: pip install -e ".[tfds]"',
  )


def _fake_example(features, image, tfds):
  """An example with every feature filled; the image goes in as PIL so encoding needs no TensorFlow."""
  from PIL import Image

  example = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      example[key] = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    elif isinstance(feature, tfds.features.FeaturesDict):
      example[key] = _fake_example(feature, image, tfds)
    elif isinstance(feature, tfds.features.ClassLabel):
      example[key] = 0
    elif isinstance(feature, tfds.features.Text):
      example[key] = "fake"
    else:
      example[key] = np.zeros(feature.shape, feature.np_dtype)
  return example


def _build_fake(tfds, tfds_name, data_dir, fake_images):
  """Prepares ``tfds_name`` in ``data_dir`` as array_record files holding ``fake_images``."""
  # Look the class up first: the lookup may import (and must register) TFDS's own builders.
  base = tfds.builder_cls(tfds_name)
  with tfds.core.registered.skip_registration():

    class Fake(base):
      name = tfds_name

      def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in fake_images}

      def _generate_examples(self, split):
        for i, image in enumerate(fake_images[split]):
          yield i, _fake_example(self.info.features, image, tfds)

  config = tfds.download.DownloadConfig(
    compute_stats=tfds.download.ComputeStatsMode.SKIP, try_download_gcs=False
  )
  Fake(data_dir=data_dir, file_format="array_record").download_and_prepare(download_config=config)


@pytest.fixture(scope="module")
def fake_tfds(tfds, tmp_path_factory):
  """A data_dir with tiny mnist, cifar10 and celeb_a; returns (data_dir, the uint8 images)."""
  data_dir = tmp_path_factory.mktemp("tensorflow_datasets")
  rng = np.random.default_rng(0)
  shapes = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "celeb_a": (218, 178, 3)}
  fakes = {}
  for tfds_name, shape in shapes.items():
    fakes[tfds_name] = {
      split: rng.integers(0, 256, (n, *shape), dtype=np.uint8)
      for split, n in zip(("train", "test"), NUM_FAKE[tfds_name])
    }
    _build_fake(tfds, tfds_name, str(data_dir), fakes[tfds_name])
  return data_dir, fakes


def _as_uint8(x):
  return np.rint((x + 1.0) * 127.5).astype(np.uint8)


def _same_images(read, expected):
  """``read`` holds the images of ``expected``, each once, in any order (TFDS shuffles on write)."""
  assert sorted(x.tobytes() for x in read) == sorted(x.tobytes() for x in expected)


def test_cifar10_end_to_end(fake_tfds):
  data_dir, fakes = fake_tfds
  ds = get_image_dataset("cifar10", data_dir=data_dir)
  assert (ds.name, ds.image_shape, ds.num_train, ds.num_test, ds.flip) == ("cifar10", (32, 32, 3), 20, 6, True)
  test = ds.test_images()
  assert test.shape == (6, 32, 32, 3) and test.dtype == np.float32
  _same_images(_as_uint8(test), fakes["cifar10"]["test"])
  # One epoch of training batches, read through __getitems__, flips undone.
  batch = ds.train_batch(0, 0, 20)[0]
  idx, flips = ds.train_indices(0, 0, 20)
  assert flips.any()
  unflipped = np.where(flips[0, :, None, None, None], batch[:, :, ::-1], batch)
  _same_images(_as_uint8(unflipped), fakes["cifar10"]["train"])
  np.testing.assert_array_equal(unflipped, ds.read_train(idx[0]))
  # Process slices and determinism hold for TFDS sources as for digits.
  parts = [ds.train_batch(0, 3, 8, num_batches=2, process_index=i, process_count=2) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), ds.train_batch(0, 3, 8, num_batches=2))


def test_mnist_end_to_end_and_padding(fake_tfds):
  data_dir, fakes = fake_tfds
  ds = get_image_dataset("mnist", data_dir=data_dir)
  assert (ds.image_shape, ds.num_train, ds.num_test, ds.flip) == ((28, 28, 1), 10, 4, False)
  test = ds.test_images()
  _same_images(_as_uint8(test), fakes["mnist"]["test"])
  padded = get_image_dataset("mnist", data_dir=data_dir, image_size=32)
  assert padded.image_shape == (32, 32, 1)
  big = padded.test_images()
  np.testing.assert_array_equal(big[:, 2:30, 2:30], test)
  border = np.ones(big.shape[1:3], bool)
  border[2:30, 2:30] = False
  assert np.all(big[:, border] == -1.0)
  assert padded.train_batch(1, 2, 5).shape == (1, 5, 32, 32, 1)


def test_celeba64_end_to_end(fake_tfds, tfds):
  data_dir, _ = fake_tfds
  ds = get_image_dataset("celeba64", data_dir=data_dir)
  assert (ds.name, ds.image_shape, ds.num_train, ds.num_test, ds.flip) == ("celeba64", (64, 64, 3), 6, 4, True)
  batch = ds.train_batch(0, 0, 4, num_batches=2)
  assert batch.shape == (2, 4, 64, 64, 3) and batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  # JPEG is lossy, so compare with the decoded source rather than the generated pixels.
  source = tfds.data_source("celeb_a", split="test", data_dir=str(data_dir), download=False)
  expected = np.stack([images.preprocess_celeba(source[i]["image"]) for i in range(4)])
  np.testing.assert_array_equal(ds.test_images(), expected)


@pytest.mark.parametrize("name, tfds_name", [("mnist", "mnist"), ("cifar10", "cifar10"), ("celeba64", "celeb_a")])
def test_missing_tfds_data_raises_with_the_prepare_command(tfds, tmp_path, name, tfds_name):
  with pytest.raises(FileNotFoundError) as info:
    get_image_dataset(name, data_dir=tmp_path)
  assert isinstance(info.value, DatasetNotPreparedError)
  message = str(info.value)
  assert f"tfds build {tfds_name} --data_dir={tmp_path} --file_format=array_record" in message
  assert "copy" in message
  assert not (tmp_path / tfds_name).exists()  # nothing was downloaded or created


def test_tfrecord_data_asks_for_array_record(fake_tfds, tmp_path):
  data_dir, _ = fake_tfds
  shutil.copytree(data_dir / "cifar10", tmp_path / "cifar10")
  (info_path,) = (tmp_path / "cifar10").glob("*/dataset_info.json")
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(DatasetNotPreparedError, match="(?s)stored as tfrecord.*--file_format=array_record"):
    get_image_dataset("cifar10", data_dir=tmp_path)


def test_missing_tfds_package_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
  with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
    get_image_dataset("cifar10", data_dir=tmp_path)
