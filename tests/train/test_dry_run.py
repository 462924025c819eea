"""`sepnets train --dry-run`: the loop's sharded train step compiled for a target, memory reported."""

import os

import pytest

from sepnets.cli import main
from sepnets.train.config import load_config
from sepnets.train.dry_run import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, 'configs', 'smoke.py:tiny')


def test_dry_run_on_a_tpu_slice_shards_the_batch():
  r = dry_run(load_config(TINY), target='tpu:v5e:2x2')
  assert r['devices'] == 4 and r['per_device_batch'] == 4 and r['device_kind'].startswith('TPU')
  assert r['temp_bytes'] > 0 and r['argument_bytes'] > 0
  assert r['per_device_bytes'] == r['argument_bytes'] + r['temp_bytes']
  assert r['device_memory_bytes'] == 16 * 2**30 and r['fits'] is True


def test_dry_run_needs_a_divisible_batch():
  with pytest.raises(ValueError, match='train.batch_size = 18 is not divisible by the 4 devices'):
    dry_run(load_config(TINY, ['train.batch_size=18']), target='tpu:v5e:2x2')


def test_dry_run_cli_needs_no_data(capsys):
  assert main(['train', '--config', os.path.join(ROOT, 'configs', 'cifar10_mobilenet_v2.py'),
               '--workdir', '/nonexistent', '--dry-run', '--config.train.batch_size=8']) == 0
  out = capsys.readouterr().out
  assert 'mobilenet_v2 train step on cpu' in out and ': fits' in out
