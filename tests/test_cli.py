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
  assert 'auto strategy on this backend: shift' in text


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
