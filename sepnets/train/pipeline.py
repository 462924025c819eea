"""Input pipeline: seeded shuffling, augmentation, normalization and background prefetch.

A training batch is a pure function of (seed, step): epoch `step // steps_per_epoch` fixes the
permutation and the batch's augmentation RNG is seeded by (seed, step). The data position is
therefore just the step, and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np

from sepnets.train.datasets import DataError, Split


@dataclasses.dataclass(frozen=True)
class Augment:
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int = 0
  flip: bool = False
  random_resized_crop: bool = False


@dataclasses.dataclass(frozen=True)
class Batch:
  step: int  # training: the global step; eval: the batch index
  images: np.ndarray  # float32 NHWC, normalized
  labels: np.ndarray  # int32
  mask: np.ndarray  # float32, 0 for padding in the last eval batch


def fit_size(images: np.ndarray, size: int) -> np.ndarray:
  """Centre zero-pad (smaller) or centre-crop (larger) uint8 NHWC images to size x size."""
  h, w = images.shape[1:3]
  if h < size or w < size:
    ph, pw = max(size - h, 0), max(size - w, 0)
    images = np.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    h, w = images.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def _pad_crop_flip(images: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
  n, h, w, _ = images.shape
  if aug.crop_padding:
    p = aug.crop_padding
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
    offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
    images = np.stack([padded[i, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets)])
  if aug.flip:
    flips = rng.random(n) < 0.5
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
  return images


def _decode(path: str, aug: Augment, train: bool, seed: tuple[int, ...]) -> np.ndarray:
  """One image file -> uint8 (size, size, 3): random-resized-crop (train) or resize + centre crop."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
  except (OSError, UnidentifiedImageError) as error:
    raise DataError(f'cannot decode image {path!r}: {error}') from error
  size = aug.image_size
  w, h = image.size
  if train and aug.random_resized_crop:
    rng = np.random.default_rng(seed)
    box = None
    for _ in range(10):
      area = w * h * rng.uniform(0.08, 1.0)
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
      if 0 < cw <= w and 0 < ch <= h:
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        box = (x, y, x + cw, y + ch)
        break
    if box is None:
      side = min(w, h)
      box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
    image = image.resize((size, size), Image.BILINEAR, box=box)
  else:
    scale = size / 0.875 / min(w, h)  # resize the short side to size / 0.875, crop the centre
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((rw, rh), Image.BILINEAR)
    left, top = (rw - size) // 2, (rh - size) // 2
    image = image.crop((left, top, left + size, top + size))
  return np.asarray(image, np.uint8)


class Pipeline:
  """Batches of one split. Training batches repeat forever from `start_step`; eval runs once."""

  def __init__(self, split: Split, aug: Augment, *, batch_size: int, seed: int, train: bool,
               workers: int = 4):
    if train and len(split) < batch_size:
      raise DataError(f'the training split has {len(split)} examples, fewer than one batch of '
                      f'{batch_size}; lower train.batch_size')
    self.split, self.aug, self.batch_size, self.seed, self.train = split, aug, batch_size, seed, train
    self.workers = workers
    self._mean = np.asarray(aug.mean, np.float32) * 255
    self._std = np.asarray(aug.std, np.float32) * 255
    self._pool = (concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='decode')
                  if split.paths is not None else None)

  @property
  def steps_per_epoch(self) -> int:
    if self.train:
      return len(self.split) // self.batch_size
    return -(-len(self.split) // self.batch_size)

  def _indices(self, step: int) -> np.ndarray:
    if not self.train:
      return np.arange(step * self.batch_size, min((step + 1) * self.batch_size, len(self.split)))
    epoch, position = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng((self.seed, epoch)).permutation(len(self.split))
    return order[position * self.batch_size:(position + 1) * self.batch_size]

  def batch(self, step: int) -> Batch:
    """The batch at `step`: a pure function of (seed, step)."""
    indices = self._indices(step)
    rng = np.random.default_rng((self.seed, 1, step))
    if self.split.paths is not None:
      seeds = [(self.seed, 2, step, i) for i in range(len(indices))]
      images = np.stack(list(self._pool.map(
          lambda a: _decode(self.split.paths[a[0]], self.aug, self.train, a[1]),
          zip(indices, seeds))))
    else:
      images = fit_size(self.split.images[indices], self.aug.image_size)
    if self.train:
      images = _pad_crop_flip(images, self.aug, rng)
    images = (images.astype(np.float32) - self._mean) / self._std
    labels = self.split.labels[indices]
    mask = np.ones(len(indices), np.float32)
    if len(indices) < self.batch_size:  # the last eval batch: pad to a fixed shape
      pad = self.batch_size - len(indices)
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    return Batch(step, images, labels, mask)

  def iterate(self, start: int = 0, stop: int | None = None, *, prefetch: int = 2) -> 'Prefetcher':
    """Batches start..stop-1 (eval: default all), prepared ahead in a background thread."""
    if stop is None:
      if self.train:
        raise ValueError('a training iteration needs a stop step')
      stop = self.steps_per_epoch
    return Prefetcher(self.batch, range(start, stop), depth=prefetch)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)


class Prefetcher:
  """Runs `make(i)` for each i in a background thread, `depth` ahead; re-raises its errors."""

  _DONE = object()

  def __init__(self, make, steps: range, *, depth: int):
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(make, steps), daemon=True,
                                    name='prefetch')
    self._thread.start()

  def _run(self, make, steps: range) -> None:
    try:
      for step in steps:
        if not self._put(make(step)):
          return
      self._put(self._DONE)
    except BaseException as error:  # surfaced in the consumer's thread
      self._put(error)

  def _put(self, item) -> bool:
    """Waits for room in the queue; False when closed first."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  @property
  def ready(self) -> int:
    """Batches prepared and waiting."""
    return self._queue.qsize()

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    item = self._queue.get()
    if item is self._DONE:
      self._queue.put(item)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)

  def __enter__(self) -> 'Prefetcher':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
