"""`sepnets quantize ptq|sensitivity` on a tiny trained run, and its bad input."""

import json
import re
import os

import pytest

from sepnets.cli import main
from sepnets.train.config import load_config
from sepnets.train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, 'configs', 'smoke.py:tiny')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('run'))
  train_and_evaluate(load_config(TINY, []), path, progress=False)
  return path


def test_sensitivity_writes_the_report(workdir, capsys):
  out = os.path.join(workdir, 'report')
  assert main(['quantize', 'sensitivity', '--config', TINY, '--workdir', workdir, '--bits', '8',
               '--eval-examples', '32', '--calibration-batches', '1', '--out', out]) == 0
  text = capsys.readouterr().out
  assert 'w8 per-tensor: all layers SQNR' in text and 'depthwise degrades first' in text
  assert sorted(os.listdir(out)) == ['sensitivity.json', 'sensitivity.md', 'sensitivity.png']
  result = json.load(open(os.path.join(out, 'sensitivity.json')))
  assert result['examples'] == 32 and result['settings'] == ['w8 per-tensor', 'w8 per-channel']
  assert len(result['layers']) == 28 and result['weights'] == 'ema'
  md = open(os.path.join(out, 'sensitivity.md')).read()
  assert '| 0 | stem | standard |' in md and '## Verdict' in md


def test_ptq_reports_float_and_quantized_accuracy(workdir, capsys):
  assert main(['quantize', 'ptq', '--config', TINY, '--workdir', workdir, '--granularity',
               'per-tensor', '--calibration-batches', '1', '--plain']) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['setting'] == 'w8ta8-minmax' and result['weights'] == 'plain'
  assert result['examples'] == 64 and 0 <= result['quant_accuracy'] <= 1
  assert os.path.isfile(os.path.join(workdir, 'quant', 'ptq-w8ta8-minmax.json'))


@pytest.mark.parametrize('extra, message', [
    (['--weight-bits', '9'], r'weight_bits must be an integer in \[4, 8\], got 9'),
    (['--calibration-batches', '0'], 'calibration needs at least one batch; got 0'),
])
def test_bad_quantize_input_is_named(workdir, extra, message, capsys):
  with pytest.raises(SystemExit):
    main(['quantize', 'ptq', '--config', TINY, '--workdir', workdir, *extra])
  assert re.search(message, capsys.readouterr().err)


def test_quantize_without_a_trained_run_says_so(tmp_path, capsys):
  with pytest.raises(SystemExit):
    main(['quantize', 'sensitivity', '--config', TINY, '--workdir', str(tmp_path)])
  assert 'no checkpoint in' in capsys.readouterr().err
