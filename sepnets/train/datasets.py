"""Dataset readers: local files -> train and eval splits, with errors that name the file.

Arrays are uint8 NHWC in memory (synthetic, CIFAR-10 binary, MNIST / Fashion-MNIST IDX, numpy
.npz); ImageFolder keeps paths and decodes in the pipeline. Nothing is unpickled: CIFAR-10 is
read from its official *binary* version, .npz with allow_pickle=False.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


class DataError(ValueError):
  """Missing, empty or corrupt data; the message names the file or directory."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: in-memory uint8 images (N, H, W, C), or image paths decoded on the fly."""
  labels: np.ndarray  # int32 (N,)
  images: np.ndarray | None = None
  paths: tuple[str, ...] | None = None

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  eval: Split
  num_classes: int
  channels: int


def synthetic(*, image_size: int, num_classes: int, channels: int, train_size: int,
              eval_size: int, seed: int = 1234) -> Dataset:
  """Learnable synthetic images: a smooth per-class template, shifted and noised per sample.

  A network must learn the templates (accuracy rises far above 1 / num_classes); the shift and
  noise keep it from being a lookup.
  """
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, size=(num_classes, 4, 4, channels))
  reps = -(-image_size // 4)
  templates = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :image_size, :image_size]

  def make(n: int, split_seed: int) -> Split:
    r = np.random.default_rng((seed, split_seed))
    labels = r.integers(0, num_classes, size=n).astype(np.int32)
    shifts = r.integers(-2, 3, size=(n, 2))
    images = np.empty((n, image_size, image_size, channels), np.float32)
    for i in range(n):
      images[i] = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1))
    images += r.normal(0, 0.15, size=images.shape)
    return Split(labels=labels, images=np.clip(images * 255, 0, 255).astype(np.uint8))

  return Dataset('synthetic', make(train_size, 1), make(eval_size, 2), num_classes, channels)


def _read(path: str) -> bytes:
  if not os.path.isfile(path):
    raise DataError(f'missing data file {path!r}')
  try:
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        return f.read()
    with open(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError) as error:
    raise DataError(f'cannot read data file {path!r}: {error}') from error


def cifar10(directory: str) -> Dataset:
  """The CIFAR-10 binary version: data_batch_1..5.bin and test_batch.bin (3073-byte records)."""
  directory = _existing_dir(directory, 'cifar10')
  nested = os.path.join(directory, 'cifar-10-batches-bin')
  if os.path.isdir(nested):
    directory = nested

  def read(names: list[str]) -> Split:
    images, labels = [], []
    for name in names:
      path = os.path.join(directory, name)
      raw = _read(path)
      if not raw or len(raw) % 3073:
        raise DataError(f'corrupt CIFAR-10 file {path!r}: {len(raw)} bytes is not a whole '
                        f'number of 3073-byte records')
      records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
      if records[:, 0].max() > 9:
        raise DataError(f'corrupt CIFAR-10 file {path!r}: label {records[:, 0].max()} > 9')
      labels.append(records[:, 0].astype(np.int32))
      images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return Split(labels=np.concatenate(labels), images=np.concatenate(images))

  train = read([f'data_batch_{i}.bin' for i in range(1, 6)])
  return Dataset('cifar10', train, read(['test_batch.bin']), 10, 3)


def _idx(path: str, rank: int) -> np.ndarray:
  raw = _read(path)
  if len(raw) < 4 + 4 * rank:
    raise DataError(f'corrupt IDX file {path!r}: {len(raw)} bytes is too short for a header')
  magic = int.from_bytes(raw[:4], 'big')
  if magic != 0x800 + rank:
    raise DataError(f'corrupt IDX file {path!r}: magic {magic:#x}, expected {0x800 + rank:#x} '
                    f'(unsigned bytes, rank {rank})')
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(rank)]
  body = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
  if body.size != int(np.prod(dims)):
    raise DataError(f'corrupt IDX file {path!r}: header says {dims}, '
                    f'body has {body.size} bytes')
  return body.reshape(dims)


def _find(directory: str, stem: str) -> str:
  for name in (stem, f'{stem}.gz', stem.replace('-idx', '.idx'), stem.replace('-idx', '.idx') + '.gz'):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return os.path.join(directory, f'{stem}[.gz]')


def mnist(directory: str, name: str = 'mnist') -> Dataset:
  """MNIST or Fashion-MNIST from the standard IDX files (optionally gzipped)."""
  directory = _existing_dir(directory, name)

  def read(prefix: str) -> Split:
    images = _idx(_find(directory, f'{prefix}-images-idx3-ubyte'), 3)
    labels = _idx(_find(directory, f'{prefix}-labels-idx1-ubyte'), 1).astype(np.int32)
    if len(images) != len(labels):
      raise DataError(f'{name} in {directory!r}: {len(images)} {prefix} images but '
                      f'{len(labels)} labels')
    if len(labels) and labels.max() > 9:
      raise DataError(f'{name} in {directory!r}: {prefix} label {labels.max()} > 9')
    return Split(labels=labels, images=images[..., None])

  return Dataset(name, read('train'), read('t10k'), 10, 1)


def numpy_arrays(path: str) -> Dataset:
  """An .npz with x_train, y_train, x_test, y_test (uint8 images NHWC or NHW, integer labels)."""
  if not os.path.isfile(path):
    raise DataError(f'missing numpy data file {path!r} (an .npz with x_train, y_train, x_test, '
                    f'y_test)')
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in ('x_train', 'y_train', 'x_test', 'y_test') if k in data}
  except (OSError, ValueError, EOFError) as error:
    raise DataError(f'corrupt numpy data file {path!r}: {error}') from error
  missing = {'x_train', 'y_train', 'x_test', 'y_test'} - set(arrays)
  if missing:
    raise DataError(f'numpy data file {path!r} lacks {", ".join(sorted(missing))}')
  splits = []
  for x, y in (('x_train', 'y_train'), ('x_test', 'y_test')):
    images, labels = arrays[x], arrays[y]
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise DataError(f'{path!r}: {x} must be uint8 NHWC or NHW, got {images.dtype} '
                      f'{images.shape}')
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f'{path!r}: {y} must be {len(images)} integer labels, got {labels.dtype} '
                      f'{labels.shape}')
    if not len(images):
      raise DataError(f'{path!r}: {x} is empty')
    splits.append(Split(labels=labels.astype(np.int32), images=images))
  if splits[0].images.shape[1:] != splits[1].images.shape[1:]:
    raise DataError(f'{path!r}: x_train images {splits[0].images.shape[1:]} differ from x_test '
                    f'{splits[1].images.shape[1:]}')
  num_classes = int(max(splits[0].labels.max(), splits[1].labels.max())) + 1
  return Dataset('numpy', splits[0], splits[1], num_classes, splits[0].images.shape[-1])


def imagefolder(directory: str) -> Dataset:
  """DIR/train/CLASS/*.jpg|png and DIR/val/CLASS/... (class names from train, sorted)."""
  directory = _existing_dir(directory, 'imagefolder')
  train_dir = os.path.join(directory, 'train')
  eval_dir = next((os.path.join(directory, d) for d in ('val', 'validation', 'test')
                   if os.path.isdir(os.path.join(directory, d))), None)
  if not os.path.isdir(train_dir) or eval_dir is None:
    raise DataError(f'imagefolder {directory!r} needs a train/ and a val/ subdirectory, one '
                    f'folder per class in each')
  classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
  if not classes:
    raise DataError(f'imagefolder {train_dir!r} has no class subdirectories')

  def read(split_dir: str) -> Split:
    paths, labels = [], []
    for label, cls in enumerate(classes):
      cls_dir = os.path.join(split_dir, cls)
      if not os.path.isdir(cls_dir):
        continue
      for name in sorted(os.listdir(cls_dir)):
        if name.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(cls_dir, name))
          labels.append(label)
    unknown = sorted(set(os.listdir(split_dir)) - set(classes))
    unknown = [u for u in unknown if os.path.isdir(os.path.join(split_dir, u))]
    if unknown:
      raise DataError(f'imagefolder {split_dir!r} has classes not in train/: {unknown}')
    if not paths:
      raise DataError(f'imagefolder {split_dir!r} has no images ({", ".join(IMAGE_EXTENSIONS)})')
    return Split(labels=np.asarray(labels, np.int32), paths=tuple(paths))

  return Dataset('imagefolder', read(train_dir), read(eval_dir), len(classes), 3)


def _existing_dir(directory: str, name: str) -> str:
  if not directory or not os.path.isdir(directory):
    raise DataError(f'{name} data directory {directory!r} does not exist')
  return directory


def load_dataset(config) -> Dataset:
  """The dataset a config's `data` section names."""
  d = config.data
  if d.name == 'synthetic':
    dataset = synthetic(image_size=d.image_size, num_classes=d.num_classes, channels=d.channels,
                        train_size=d.train_size, eval_size=d.eval_size)
  elif d.name == 'cifar10':
    dataset = cifar10(d.dir)
  elif d.name in ('mnist', 'fashion_mnist'):
    dataset = mnist(d.dir, d.name)
  elif d.name == 'numpy':
    dataset = numpy_arrays(d.dir)
  else:
    dataset = imagefolder(d.dir)
  for split_name, split in (('train', dataset.train), ('eval', dataset.eval)):
    if not len(split):
      raise DataError(f'{dataset.name} {split_name} split in {d.dir!r} is empty')
  return dataset
