"""Dataset readers on small files the tests write: exact contents, and errors naming the file."""

import gzip
import os

import numpy as np
import pytest

from sepnets.train.datasets import DataError, cifar10, imagefolder, mnist, numpy_arrays, synthetic


def write_idx(path, array, *, gz=False):
  header = (0x800 + array.ndim).to_bytes(4, 'big') + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  with (gzip.open if gz else open)(path, 'wb') as f:
    f.write(data)


def write_mnist(directory, n_train=6, n_test=4, gz=False):
  rng = np.random.default_rng(0)
  out = {}
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    suffix = '.gz' if gz else ''
    write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte{suffix}'), images, gz=gz)
    write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte{suffix}'), labels, gz=gz)
    out[prefix] = (images, labels)
  return out


@pytest.mark.parametrize('gz', [False, True])
def test_mnist_idx(tmp_path, gz):
  written = write_mnist(tmp_path, gz=gz)
  data = mnist(str(tmp_path), 'fashion_mnist')
  assert data.channels == 1 and data.num_classes == 10
  np.testing.assert_array_equal(data.train.images[..., 0], written['train'][0])
  np.testing.assert_array_equal(data.eval.labels, written['t10k'][1])


def test_mnist_errors_name_the_file(tmp_path):
  write_mnist(tmp_path)
  os.remove(tmp_path / 't10k-labels-idx1-ubyte')
  with pytest.raises(DataError, match='missing data file .*t10k-labels-idx1-ubyte'):
    mnist(str(tmp_path))
  write_idx(tmp_path / 't10k-labels-idx1-ubyte', np.zeros(3, np.uint8))
  with pytest.raises(DataError, match='4 t10k images but 3 labels'):
    mnist(str(tmp_path))
  (tmp_path / 't10k-labels-idx1-ubyte').write_bytes(b'\x00\x00\x08\x03' + b'\x00' * 8)
  with pytest.raises(DataError, match=r"corrupt IDX file .*t10k-labels-idx1-ubyte.*magic 0x803"):
    mnist(str(tmp_path))
  raw = (tmp_path / 'train-images-idx3-ubyte').read_bytes()
  (tmp_path / 'train-images-idx3-ubyte').write_bytes(raw[:-10])
  with pytest.raises(DataError, match=r"corrupt IDX file .*train-images.*header says \[6, 28, 28\]"):
    mnist(str(tmp_path))
  with pytest.raises(DataError, match="mnist data directory '/no/such' does not exist"):
    mnist('/no/such')


def write_cifar(directory, per_file=3):
  rng = np.random.default_rng(0)
  files = {}
  for name in [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']:
    records = rng.integers(0, 256, size=(per_file, 3073), dtype=np.uint8)
    records[:, 0] %= 10
    (directory / name).write_bytes(records.tobytes())
    files[name] = records
  return files


def test_cifar10_binary(tmp_path):
  files = write_cifar(tmp_path)
  data = cifar10(str(tmp_path))
  assert data.train.images.shape == (15, 32, 32, 3) and len(data.eval) == 3
  first = files['data_batch_1.bin'][0]
  assert data.train.labels[0] == first[0]
  # record layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32
  assert data.train.images[0, 0, 1, 0] == first[1 + 1]
  assert data.train.images[0, 2, 0, 1] == first[1 + 1024 + 64]
  assert data.train.images[0, 31, 31, 2] == first[3072]


def test_cifar10_errors_name_the_file(tmp_path):
  write_cifar(tmp_path)
  (tmp_path / 'data_batch_3.bin').write_bytes(b'\x01' * 3000)
  with pytest.raises(DataError, match=r"corrupt CIFAR-10 file .*data_batch_3.bin.*3000 bytes"):
    cifar10(str(tmp_path))
  os.remove(tmp_path / 'test_batch.bin')
  write_cifar_fixed = np.zeros((1, 3073), np.uint8)
  (tmp_path / 'data_batch_3.bin').write_bytes(write_cifar_fixed.tobytes())
  with pytest.raises(DataError, match='missing data file .*test_batch.bin'):
    cifar10(str(tmp_path))


def test_numpy_npz(tmp_path):
  x = np.zeros((5, 32, 32), np.uint8)
  np.savez(tmp_path / 'd.npz', x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=[0, 1])
  data = numpy_arrays(str(tmp_path / 'd.npz'))
  assert data.train.images.shape == (5, 32, 32, 1) and data.num_classes == 5
  np.savez(tmp_path / 'bad.npz', x_train=x, y_train=np.arange(5))
  with pytest.raises(DataError, match="lacks x_test, y_test"):
    numpy_arrays(str(tmp_path / 'bad.npz'))
  (tmp_path / 'junk.npz').write_bytes(b'not a zip')
  with pytest.raises(DataError, match='corrupt numpy data file .*junk.npz'):
    numpy_arrays(str(tmp_path / 'junk.npz'))


def write_folder(root, classes=('cat', 'dog'), per_class=3, size=(40, 30)):
  from PIL import Image
  for split in ('train', 'val'):
    for i, cls in enumerate(classes):
      d = root / split / cls
      d.mkdir(parents=True)
      for j in range(per_class):
        pixels = np.full((size[1], size[0], 3), 40 * i + j, np.uint8)
        Image.fromarray(pixels).save(d / f'{j}.{"png" if j % 2 else "jpg"}')


def test_imagefolder(tmp_path):
  write_folder(tmp_path)
  data = imagefolder(str(tmp_path))
  assert data.num_classes == 2 and len(data.train) == 6
  assert list(data.train.labels) == [0, 0, 0, 1, 1, 1]
  assert data.train.paths[3].endswith(os.path.join('train', 'dog', '0.jpg'))


def test_imagefolder_errors(tmp_path):
  with pytest.raises(DataError, match='needs a train/ and a val/'):
    imagefolder(str(tmp_path))
  write_folder(tmp_path)
  (tmp_path / 'val' / 'bird').mkdir()
  with pytest.raises(DataError, match=r"classes not in train/: \['bird'\]"):
    imagefolder(str(tmp_path))


def test_synthetic_is_deterministic_and_learnable():
  a = synthetic(image_size=32, num_classes=10, channels=3, train_size=500, eval_size=200)
  b = synthetic(image_size=32, num_classes=10, channels=3, train_size=500, eval_size=200)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  # nearest class mean, fitted on train, classifies eval far above chance (0.1)
  x = a.train.images.reshape(500, -1).astype(np.float32)
  means = np.stack([x[a.train.labels == k].mean(0) for k in range(10)])
  e = a.eval.images.reshape(200, -1).astype(np.float32)
  predicted = np.argmin(((e[:, None] - means[None]) ** 2).sum(-1), axis=1)
  assert (predicted == a.eval.labels).mean() > 0.8
