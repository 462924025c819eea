"""Configs: merged over one schema, locked, typed overrides, errors that name the key."""

import glob
import os

import pytest

from sepnets.train.config import ConfigError, build_config, defaults, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def test_shipped_configs_exist():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {'smoke.py', 'cifar10_mobilenet_v2.py', 'fashion_mnist_mobilenet_v3_small.py',
          'imagefolder_efficientnet_b0.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_shipped_config_loads_and_documents_its_launch_command(path):
  import ast
  doc = ast.get_docstring(ast.parse(open(path).read()))
  rel = os.path.relpath(path, ROOT)
  assert doc.startswith(f'sepnets train --config {rel}'), doc.splitlines()[0]
  config = load_config(path, ['data.dir=/somewhere'])
  assert config.model.name
  with pytest.raises(AttributeError):  # locked: no new keys
    config.train.nonsense = 1


def test_presets():
  smoke = os.path.join(ROOT, 'configs', 'smoke.py')
  assert load_config(f'{smoke}:tiny').train.steps == 12
  assert load_config(smoke).train.steps == 0
  with pytest.raises(ConfigError, match="unknown preset 'nope'"):
    load_config(f'{smoke}:nope')


def test_unknown_override_lists_valid_keys():
  with pytest.raises(ConfigError, match=r"unknown config key 'train.epochz' \(did you mean "
                     r"'train.epochs'\?\); valid keys: .*train.batch_size"):
    build_config({}, ['train.epochz=3'])
  with pytest.raises(ConfigError, match="unknown config key 'trian'"):
    build_config({}, ['trian.epochs=3'])


def test_unknown_key_in_a_config_file_is_rejected():
  with pytest.raises(ConfigError, match="unknown config key 'optimizer.lr'"):
    build_config({'optimizer': {'lr': 0.1}})


def test_override_types():
  c = build_config({}, ['train.batch_size=8', 'optimizer.learning_rate=1', 'data.flip=true',
                        'data.mean=(0.1, 0.2, 0.3)', 'data.std=[0.5, 0.5, 0.5]',
                        'model.name=mobilenet_v2', 'data.dir=/a/b'])
  assert c.train.batch_size == 8
  assert c.optimizer.learning_rate == 1.0 and isinstance(c.optimizer.learning_rate, float)
  assert c.data.flip is True
  assert c.data.mean == (0.1, 0.2, 0.3) and c.data.std == (0.5, 0.5, 0.5)
  assert c.model.name == 'mobilenet_v2' and c.data.dir == '/a/b'
  with pytest.raises(ConfigError, match="'train.batch_size' expects int, got 'abc'"):
    build_config({}, ['train.batch_size=abc'])
  with pytest.raises(ConfigError, match="'data.flip' expects bool"):
    build_config({}, ['data.flip=1'])
  with pytest.raises(ConfigError, match='expected --config.KEY=VALUE'):
    build_config({}, ['train.batch_size'])


@pytest.mark.parametrize('override, match', [
    ('data.name=imagenet', "'data.name' must be one of synthetic"),
    ('optimizer.name=lamb', "'optimizer.name' must be one of sgd, rmsprop, adamw"),
    ('optimizer.learning_rate=0', "'optimizer.learning_rate' must be positive"),
    ('train.batch_size=0', "'train.batch_size' must be positive"),
    ('train.ema_decay=1.0', r"'train.ema_decay' must be in \[0, 1\)"),
    ('data.name=cifar10', "'data.dir' must name the cifar10 data"),
    ('model.dtype=float64', "'model.dtype' must be one of float32, bfloat16"),
])
def test_bad_values_name_the_key(override, match):
  with pytest.raises(ConfigError, match=match):
    build_config({}, [override])


def test_missing_config_file():
  with pytest.raises(ConfigError, match="config file 'nope.py' not found"):
    load_config('nope.py')


def test_defaults_cover_every_documented_section():
  assert set(defaults().keys()) == {'seed', 'model', 'data', 'train', 'optimizer', 'schedule',
                                    'quant'}
