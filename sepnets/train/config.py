"""Training configs: ml_collections ConfigDicts, checked against one schema and locked.

A config file (`configs/NAME.py`) defines `get_config(preset=None)` returning a ConfigDict that
sets only what differs from `defaults()`; `load_config('configs/x.py:preset', overrides)`
merges it over the defaults, rejects unknown keys (listing the valid ones), locks it, applies
`key.path=value` overrides with the field's type, and validates values.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

DATASETS = ('synthetic', 'cifar10', 'mnist', 'fashion_mnist', 'imagefolder', 'numpy')
OPTIMIZERS = ('sgd', 'rmsprop', 'adamw')
SCHEDULES = ('cosine', 'step', 'exponential', 'constant')
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config file, key or value is wrong; the message names it."""


def defaults() -> ml_collections.ConfigDict:
  """Every key a training config may set, with its default (the schema)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mobilenet_v3_small'
  c.model.width = 1.0  # family width multiplier (ignored by models without one: see options)
  c.model.dropout = -1.0  # < 0: the model's default
  c.model.drop_path_rate = -1.0  # < 0: the model's default
  c.model.stem_stride = 2
  c.model.strategy = 'auto'
  c.model.padding = 'symmetric'
  c.model.dtype = 'float32'  # compute dtype; parameters stay float32

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'
  c.data.dir = ''  # the dataset's directory (numpy: an .npz with x_train, y_train, x_test, y_test)
  c.data.image_size = 32
  c.data.num_classes = 10
  c.data.channels = 3  # synthetic and numpy only; real datasets know theirs
  c.data.train_size = 2048  # synthetic only
  c.data.eval_size = 512  # synthetic only
  c.data.crop_padding = 0  # pad-and-crop augmentation (4 for CIFAR); 0: off
  c.data.flip = False  # random horizontal flip
  c.data.random_resized_crop = False  # Inception-style crop (ImageFolder at 224)
  c.data.mean = (0.5,)  # per channel, or one value for all channels, on [0, 1] pixels
  c.data.std = (0.5,)
  c.data.prefetch = 2  # batches prepared ahead in a background thread
  c.data.workers = 4  # decoding threads (ImageFolder)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global, over all devices
  c.train.devices = 0  # data parallel over the first N local devices; 0: all
  c.train.epochs = 1.0
  c.train.steps = 0  # > 0 overrides epochs
  c.train.log_every = 20
  c.train.eval_every = 0  # steps; 0: at the end only
  c.train.checkpoint_every = 100  # steps; a checkpoint is always written at the end
  c.train.keep_checkpoints = 2
  c.train.label_smoothing = 0.0
  c.train.grad_clip_norm = 0.0  # 0: off
  c.train.ema_decay = 0.0  # 0: no EMA; e.g. 0.9999 (warmed up: min(decay, (1 + step) / (10 + step)))
  c.train.eval_batch_size = 256

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1  # peak, after warmup
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0  # L2 on kernels only (BatchNorm and biases skipped)
  c.optimizer.eps = 1e-3  # rmsprop (TF: inside the sqrt) and adamw
  c.optimizer.rms_decay = 0.9
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 0
  c.schedule.final_fraction = 0.0  # cosine: final lr / peak lr
  c.schedule.decay_rate = 0.1  # step and exponential: factor per decay_steps
  c.schedule.decay_steps = 1000  # step and exponential

  c.quant = ml_collections.ConfigDict()  # quantization-aware training (sepnets.quant)
  c.quant.enabled = False
  c.quant.init_from = ''  # workdir of the float run to start from (its latest checkpoint)
  c.quant.weight_bits = 8
  c.quant.per_channel = False  # weight scales per output channel (else one per tensor)
  c.quant.act_bits = 8  # 0: float activations
  c.quant.equalize = False  # cross-layer equalization before calibration (ReLU6 -> ReLU)
  c.quant.calibration_batches = 8
  c.quant.method = 'minmax'  # activation range calibration: minmax, percentile, mse
  return c


def _merge(target: ml_collections.ConfigDict, source: Mapping[str, Any], prefix: str) -> None:
  for key, value in source.items():
    path = f'{prefix}{key}'
    if key not in target:
      raise ConfigError(_unknown_key(path, target, prefix))
    if isinstance(target[key], ml_collections.ConfigDict):
      if not isinstance(value, Mapping):
        raise ConfigError(f'config key {path!r} is a section; got {value!r}')
      _merge(target[key], value, f'{path}.')
    else:
      _assign(target, key, value, path)


def _unknown_key(path: str, section: ml_collections.ConfigDict, prefix: str) -> str:
  valid = [f'{prefix}{k}' for k in section.keys()]
  close = difflib.get_close_matches(path, valid, n=1, cutoff=0.6)
  hint = f' (did you mean {close[0]!r}?)' if close else ''
  return f'unknown config key {path!r}{hint}; valid keys: {", ".join(valid)}'


def _assign(section: ml_collections.ConfigDict, key: str, value: Any, path: str) -> None:
  current = section[key]
  if isinstance(current, tuple) and isinstance(value, (list, tuple, int, float)):
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if isinstance(current, bool) != isinstance(value, bool):
    raise ConfigError(f'config key {path!r} expects {type(current).__name__}, got {value!r}')
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if type(value) is not type(current):
    raise ConfigError(f'config key {path!r} expects {type(current).__name__}, got {value!r}')
  section[key] = value


def _parse(text: str) -> Any:
  lowered = text.strip().lower()
  if lowered in ('true', 'false'):
    return lowered == 'true'
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies 'a.b=value' strings (values parsed as Python literals, else taken as strings)."""
  for item in overrides:
    path, sep, text = item.partition('=')
    if not sep or not path:
      raise ConfigError(f'expected --config.KEY=VALUE, got {item!r}')
    parts = path.split('.')
    section, prefix = config, ''
    for part in parts[:-1]:
      if part not in section or not isinstance(section[part], ml_collections.ConfigDict):
        raise ConfigError(_unknown_key(prefix + part, section, prefix))
      section, prefix = section[part], f'{prefix}{part}.'
    key = parts[-1]
    if key not in section or isinstance(section[key], ml_collections.ConfigDict):
      raise ConfigError(_unknown_key(path, section, prefix))
    value = _parse(text)
    if isinstance(section[key], str) and not isinstance(value, str):
      value = text
    _assign(section, key, value, path)


def validate(c: ml_collections.ConfigDict, *, need_data: bool = True) -> None:
  """Value checks that types alone cannot make; raises ConfigError naming the key."""

  def need(ok: bool, key: str, what: str) -> None:
    if not ok:
      raise ConfigError(f'config key {key!r} {what}, got {_get(c, key)!r}')

  need(c.data.name in DATASETS, 'data.name', f'must be one of {", ".join(DATASETS)}')
  need(c.optimizer.name in OPTIMIZERS, 'optimizer.name', f'must be one of {", ".join(OPTIMIZERS)}')
  need(c.schedule.name in SCHEDULES, 'schedule.name', f'must be one of {", ".join(SCHEDULES)}')
  need(c.model.dtype in DTYPES, 'model.dtype', f'must be one of {", ".join(DTYPES)}')
  need(not need_data or c.data.name == 'synthetic' or bool(c.data.dir), 'data.dir',
       f'must name the {c.data.name} data (a directory; for numpy an .npz file)')
  for key in ('train.batch_size', 'train.eval_batch_size', 'train.log_every', 'data.image_size',
              'data.num_classes', 'data.channels', 'train.keep_checkpoints'):
    need(_get(c, key) > 0, key, 'must be positive')
  for key in ('train.devices', 'train.steps', 'train.eval_every', 'train.checkpoint_every', 'data.crop_padding',
              'data.prefetch', 'schedule.warmup_steps', 'optimizer.weight_decay',
              'train.grad_clip_norm', 'train.label_smoothing'):
    need(_get(c, key) >= 0, key, 'must not be negative')
  need(c.train.steps > 0 or c.train.epochs > 0, 'train.epochs', 'must be positive when train.steps is 0')
  need(c.optimizer.learning_rate > 0, 'optimizer.learning_rate', 'must be positive')
  need(0 <= c.train.ema_decay < 1, 'train.ema_decay', 'must be in [0, 1)')
  need(c.train.label_smoothing < 1, 'train.label_smoothing', 'must be below 1')
  need(c.data.workers > 0, 'data.workers', 'must be positive')
  need(c.schedule.decay_steps > 0, 'schedule.decay_steps', 'must be positive')
  if c.quant.enabled:
    need(bool(c.quant.init_from), 'quant.init_from', 'must name the float run\'s workdir')
    need(4 <= c.quant.weight_bits <= 8, 'quant.weight_bits', 'must be in [4, 8]')
    need(c.quant.act_bits == 0 or 4 <= c.quant.act_bits <= 8, 'quant.act_bits',
         'must be 0 (float) or in [4, 8]')
    need(c.quant.calibration_batches > 0, 'quant.calibration_batches', 'must be positive')
    need(c.quant.method in ('minmax', 'percentile', 'mse'), 'quant.method',
         'must be one of minmax, percentile, mse')
  need(len(c.data.mean) in (1, c.data.channels) and len(c.data.std) == len(c.data.mean)
       and all(s > 0 for s in c.data.std), 'data.std',
       'must be positive, with one value or one per channel like data.mean')


def _get(c: ml_collections.ConfigDict, path: str) -> Any:
  for part in path.split('.'):
    c = c[part]
  return c


def load_config(spec: str, overrides: Sequence[str] = (), *,
                need_data: bool = True) -> ml_collections.ConfigDict:
  """'path/to/config.py[:preset]' plus 'key=value' overrides -> a locked, validated config."""
  path, _, preset = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path!r} not found')
  module_spec = importlib.util.spec_from_file_location(f'sepnets_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as error:  # a broken config file: say which
    raise ConfigError(f'config file {path!r} failed to load: {error!r}') from error
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path!r} defines no get_config()')
  try:
    loaded = module.get_config(preset) if preset else module.get_config()
  except (KeyError, ValueError, TypeError) as error:
    raise ConfigError(f'config {spec!r}: {error}') from error
  return build_config(loaded, overrides, need_data=need_data)


def build_config(loaded: Mapping[str, Any] | ml_collections.ConfigDict,
                 overrides: Sequence[str] = (), *,
                 need_data: bool = True) -> ml_collections.ConfigDict:
  """Merges a partial config over `defaults()`, locks it, applies overrides, validates."""
  if isinstance(loaded, ml_collections.ConfigDict):
    loaded = loaded.to_dict()
  config = defaults()
  _merge(config, loaded, '')
  config.lock()
  apply_overrides(config, overrides)
  validate(config, need_data=need_data)
  return config
