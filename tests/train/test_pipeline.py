"""The input pipeline: batches are a pure function of (seed, step); prefetch runs ahead."""

import time

import numpy as np
import pytest

from sepnets.train.datasets import DataError, Split, imagefolder
from sepnets.train.pipeline import Augment, Pipeline, Prefetcher, fit_size

from tests.train.test_datasets import write_folder


def split(n=10, size=32, channels=3):
  images = np.arange(n * size * size * channels, dtype=np.uint32).reshape(n, size, size, channels)
  return Split(labels=np.arange(n, dtype=np.int32), images=(images % 251).astype(np.uint8))


PLAIN = Augment(image_size=32, mean=(0.0,), std=(1.0,))


def test_batches_are_a_pure_function_of_seed_and_step():
  aug = Augment(image_size=32, mean=(0.5,), std=(0.5,), crop_padding=4, flip=True)
  p = Pipeline(split(), aug, batch_size=4, seed=3, train=True)
  q = Pipeline(split(), aug, batch_size=4, seed=3, train=True)
  for step in (0, 1, 5, 17):
    np.testing.assert_array_equal(p.batch(step).images, q.batch(step).images)
  assert not np.array_equal(p.batch(0).labels, Pipeline(split(), aug, batch_size=4, seed=4,
                                                         train=True).batch(0).labels)


def test_each_epoch_is_a_permutation():
  p = Pipeline(split(10), PLAIN, batch_size=5, seed=0, train=True)
  assert p.steps_per_epoch == 2
  epoch0 = np.concatenate([p.batch(s).labels for s in (0, 1)])
  epoch1 = np.concatenate([p.batch(s).labels for s in (2, 3)])
  assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
  assert not np.array_equal(epoch0, epoch1)


def test_no_augmentation_is_plain_normalization():
  data = split(4)
  p = Pipeline(data, Augment(image_size=32, mean=(0.5,), std=(0.25,)), batch_size=4, seed=0,
               train=True)
  b = p.batch(0)
  expected = (data.images[b.labels].astype(np.float32) - 127.5) / 63.75
  np.testing.assert_allclose(b.images, expected, rtol=1e-6)


def test_pad_crop_and_flip_keep_shapes_and_pixels():
  data = split(8)
  aug = Augment(image_size=32, mean=(0.0,), std=(1.0 / 255,), crop_padding=4, flip=True)
  b = Pipeline(data, aug, batch_size=8, seed=1, train=True).batch(0)
  assert b.images.shape == (8, 32, 32, 3)
  assert not np.array_equal(b.images, data.images[b.labels].astype(np.float32))
  # every augmented image is a shifted / flipped window of the reflect-padded original
  assert set(np.unique(b.images)) <= set(np.unique(data.images))


def test_eval_covers_each_example_once_and_masks_the_padding():
  p = Pipeline(split(10), PLAIN, batch_size=4, seed=0, train=False)
  batches = list(p.iterate())
  assert [b.images.shape[0] for b in batches] == [4, 4, 4]
  mask = np.concatenate([b.mask for b in batches])
  labels = np.concatenate([b.labels for b in batches])[mask > 0]
  assert list(labels) == list(range(10)) and mask.sum() == 10


def test_fit_size_pads_mnist_to_32():
  images = np.ones((2, 28, 28, 1), np.uint8)
  out = fit_size(images, 32)
  assert out.shape == (2, 32, 32, 1) and out.sum() == 2 * 28 * 28 and out[0, 1, 1, 0] == 0
  assert fit_size(np.ones((1, 40, 40, 3), np.uint8), 32).shape == (1, 32, 32, 3)


def test_too_small_training_split():
  with pytest.raises(DataError, match='fewer than one batch of 64'):
    Pipeline(split(10), PLAIN, batch_size=64, seed=0, train=True)


def test_imagefolder_decodes_crops_and_names_a_corrupt_file(tmp_path):
  write_folder(tmp_path)
  data = imagefolder(str(tmp_path))
  aug = Augment(image_size=32, mean=(0.0,), std=(1.0,), random_resized_crop=True, flip=True)
  train = Pipeline(data.train, aug, batch_size=4, seed=0, train=True, workers=2)
  b = train.batch(0)
  assert b.images.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(b.images, train.batch(0).images)
  evaluation = Pipeline(data.eval, aug, batch_size=4, seed=0, train=False)
  first = evaluation.batch(0)
  assert first.images[0].min() == first.images[0].max() == 0  # class 0, image 0: a flat 0 image
  (tmp_path / 'train' / 'dog' / '1.png').write_bytes(b'garbage')
  with pytest.raises(DataError, match=r"cannot decode image .*dog.*1.png"):
    for s in range(train.steps_per_epoch):
      train.batch(s)
  with pytest.raises(DataError, match=r"cannot decode image .*dog.*1.png"):
    with train.iterate(0, 4) as batches:
      list(batches)
  train.close()


def test_prefetch_runs_ahead_of_a_slow_consumer():
  made = []

  def make(i):
    time.sleep(0.01)
    made.append(i)
    return i

  with Prefetcher(make, range(20), depth=3) as batches:
    got = []
    for item in batches:
      time.sleep(0.1)  # the 'train step' is slower than decoding
      if item >= 1:  # after the first item, the next ones are always ready when asked for
        assert batches.ready >= 1
      got.append(item)
  assert got == list(range(20))


def test_prefetch_reraises_errors_in_the_consumer():
  def make(i):
    if i == 2:
      raise DataError('broken file x.png')
    return i

  with pytest.raises(DataError, match='broken file x.png'):
    with Prefetcher(make, range(5), depth=2) as batches:
      list(batches)
