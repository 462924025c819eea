"""The real-data acceptance run: MobileNetV3-Small on the real Fashion-MNIST, trained with the
shipped config and its launch command, reaches at least 88% test accuracy.

The data comes from Debian's `dataset-fashion-mnist` (`.ci/fashion_mnist` installs it, or
unpacks it without root and CI sets SEPNETS_FASHION_MNIST). A missing dataset fails this test
with the install command: it is not skipped.
"""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist_mobilenet_v3_small.py')
DATA = os.environ.get('SEPNETS_FASHION_MNIST', '/usr/share/datasets/fashion-mnist')


@pytest.mark.slow
def test_mobilenet_v3_small_reaches_88_percent_on_fashion_mnist(tmp_path):
  assert os.path.isfile(os.path.join(DATA, 't10k-labels-idx1-ubyte.gz')), (
      f'Fashion-MNIST is not in {DATA}: run `bash .ci/fashion_mnist` (apt-get install '
      'dataset-fashion-mnist) or set SEPNETS_FASHION_MNIST')
  start = time.time()
  run = subprocess.run(
      [sys.executable, '-m', 'sepnets.cli', 'train', '--config', CONFIG, '--workdir',
       str(tmp_path), f'--config.data.dir={DATA}', '--quiet'],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr[-3000:]
  with open(tmp_path / 'summary.json') as f:
    summary = json.load(f)
  print(f"fashion_mnist: eval {summary['eval']['accuracy']:.4f}, "
        f"EMA {summary['eval_ema']['accuracy']:.4f}, {time.time() - start:.0f} s")
  assert summary['dataset'] == 'fashion_mnist'
  assert summary['eval']['examples'] == 10000  # the real test set
  assert summary['eval']['accuracy'] >= 0.88
