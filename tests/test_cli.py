"""`sepnets layers`: its JSON result is consistent with the formulas and with XLA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sepnets import costs
from sepnets.cli import main

SMALL = ['layers', '--kernel', '3', '--in-chs', '8', '--out-chs', '16', '--height', '10',
         '--width', '12', '--batch', '2', '--repeats', '1', '--quiet']


def test_layers_json(capsys, tmp_path):
  out = tmp_path / 'res' / 'layers.json'
  assert main(SMALL + ['--json', '--strategies', 'grouped,shift,auto', '--out', str(out)]) == 0
  result = json.loads(capsys.readouterr().out)
  assert json.loads(out.read_text()) == result
  rows = {(r['layer'], r['strategy']): r for r in result['rows']}
  assert set(rows) == {('standard', None), ('pointwise', None),
                       *((layer, s) for layer in ('depthwise', 'separable')
                         for s in ('grouped', 'shift', 'auto'))}
  assert rows['standard', None]['params'] == costs.standard_params(3, 8, 16)
  assert rows['depthwise', 'shift']['params'] == costs.depthwise_params(3, 8)
  assert rows['pointwise', None]['params'] == costs.pointwise_params(8, 16)
  assert rows['separable', 'grouped']['params'] == costs.separable_params(3, 8, 16)
  for key in [('standard', None), ('pointwise', None), ('depthwise', 'grouped'),
              ('separable', 'grouped')]:
    assert rows[key]['flops'] == 2 * rows[key]['macs_valid'], key
  for row in result['rows']:
    assert row['forward_ms'] > 0 and row['forward_backward_ms'] > 0
  ratios = result['savings_standard_over_separable']['grouped']
  assert ratios['params'] == costs.standard_params(3, 8, 16) / costs.separable_params(3, 8, 16)
  assert result['metadata']['versions']['jax']


def test_layers_table(capsys):
  assert main(SMALL + ['--no-backward', '--strategies', 'shift']) == 0
  text = capsys.readouterr().out
  assert 'separable [shift]: params' in text
  assert 'auto strategy on this backend: native' in text


@pytest.mark.parametrize('argv,message', [
    (['layers', '--strategies', 'grouped,fast'], "unknown depthwise strategy 'fast'"),
    (['layers', '--kernel', '0'], 'expected a positive integer, got 0'),
    (['layers', '--padding', 'reflect'], "invalid choice: 'reflect'"),
    (['layers', '--kernel', '7', '--height', '4', '--width', '4', '--padding', 'valid',
      '--quiet'], 'input 4x4 is too small'),
])
def test_layers_bad_input(argv, message, capsys):
  with pytest.raises(SystemExit) as exc:
    main(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert message in err
  assert 'Traceback' not in err


def test_console_script_installed():
  script = Path(sys.executable).parent / 'sepnets'
  proc = subprocess.run([str(script), 'layers', '--help'], capture_output=True, text=True, check=True)
  assert '--strategies' in proc.stdout


def test_models_json_matches_reference(capsys):
  assert main(['models', 'mobilenet_v3*', '--json']) == 0
  rows = {r['name']: r for r in json.loads(capsys.readouterr().out)}
  assert set(rows) == {'mobilenet_v3_large', 'mobilenet_v3_small'}
  assert (rows['mobilenet_v3_large']['params'], rows['mobilenet_v3_large']['macs']) == (5_483_032, 216_589_760)
  assert rows['mobilenet_v3_small']['image_size'] == 224


def test_summary_table_and_json(capsys):
  assert main(['summary', 'mobilenet_v2', '--image-size', '64', '-o', 'width=0.5']) == 0
  text = capsys.readouterr().out
  assert 'stages.1.0.conv_dw.conv' in text and 'depthwise' in text and 'total' in text
  assert main(['summary', 'mobilenet_v2', '--json', '--mode', 'train', '--batch', '2']) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['mode'] == 'train' and result['image_size'] == 224
  assert sum(r['params'] for r in result['layers']) == 3_504_872
  assert sum(r['macs'] for r in result['layers']) == 2 * 300_774_272


@pytest.mark.parametrize('argv,message', [
    (['summary', 'mobilenetv2'], "unknown model 'mobilenetv2'; did you mean 'mobilenet_v2'"),
    (['summary', 'mobilenet_v2', '-o', 'widht=2'], "unknown option(s) 'widht'"),
    (['summary', 'mobilenet_v2', '-o', 'width'], 'expected KEY=VALUE'),
    (['summary', 'mobilenet_v2', '-o', 'width=0'], 'width multiplier must be'),
    (['summary', 'mobilenet_v2', '--image-size', '16'], 'image 16x16 is too small'),
    (['models', 'resnet*'], "no model matches 'resnet*'"),
])
def test_zoo_commands_bad_input(argv, message, capsys):
  with pytest.raises(SystemExit) as exc:
    main(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert message in err and 'Traceback' not in err
