"""`sepnets bench` and its runner: files, statuses, numbers that agree with each other."""

import csv
import json
from pathlib import Path

import pytest

from sepnets.cli import main
from sepnets.compile.lowering import compile_workload, model_workload
from sepnets.compile.suite import BenchConfig, run_bench, worked_example_rows
from sepnets.compile.targets import parse_target
from sepnets.files import default_mode


def test_run_bench_writes_everything(tmp_path):
  config = BenchConfig(models=('mobilenet_v3_small',), targets=('cpu', 'tpu:v5e', 'gpu:h100'),
                       batches=(2,), modes=('infer', 'train'), image_size=32, repeats=1,
                       strategy='grouped')
  result = run_bench(config, tmp_path)
  runs = {(r['target'], r['mode']): r for r in result['runs']}
  assert [r['status'] for r in result['runs']] == ['ok'] * 6
  cpu, tpu, gpu = runs['cpu', 'infer'], runs['tpu:v5e', 'infer'], runs['gpu:h100', 'infer']
  assert cpu['params'] == tpu['params'] == gpu['params'] == 2_542_856
  assert cpu['latency_ms'] > 0 and cpu['achieved_gflops'] > 0
  assert 0 < cpu['roofline_fraction'] and cpu['roofline_bound'] in ('compute', 'memory')
  assert 'latency_ms' not in tpu and tpu['device_kind'].startswith('TPU')
  assert gpu['device_kind'] == 'NVIDIA H100 80GB HBM3' and gpu['flops_source'] == 'hlo'
  assert gpu['memory_limit_bytes'] > 79 * 2**30
  # every depthwise conv survives as a grouped convolution on CPU and TPU (1x1 convs may
  # become dots); on the GPU they are cuDNN calls
  assert cpu['convolutions']['depthwise'] == tpu['convolutions']['depthwise'] == 11
  assert gpu['custom_calls'].get('__cudnn$convForward', 0) >= 11
  # inference: every forward conv does exactly 2 x valid MACs on CPU and GPU
  for r in (cpu, gpu):
    rec = r['reconciliation']
    assert rec['layers_exact'] == rec['layers'] and rec['unexplained'] == 0
    assert rec['forward_matmul'] == 2 * r['macs_valid']
  direct = compile_workload(model_workload('mobilenet_v3_small', batch=2, image_size=32,
                                           strategy='grouped'), parse_target('cpu'))
  assert cpu['flops'] == direct.stats.flops
  assert runs['cpu', 'train']['flops'] > 2 * cpu['flops']
  for r in result['runs'][:4]:
    for path in r['files']:
      assert open(path).read().strip()
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['runs'] == json.loads(json.dumps(result['runs']))
  with open(tmp_path / 'results.csv') as f:
    assert len(list(csv.DictReader(f))) == 6
  report = (tmp_path / 'report.md').read_text()
  assert report.count('| mobilenet_v3_small |') == 6 and '## Reconciliation' in report
  assert (tmp_path / cpu['id'] / 'reconciliation.md').read_text().count('| exact |') == cpu['reconciliation']['layers']
  assert result['plots'] == ['roofline.png', 'macs_vs_latency.png', 'memory.png']
  for name in result['plots']:
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert f'![{name}]({name})' in report
  for name in ('results.json', 'results.csv', 'report.md', 'memory.png'):
    assert (tmp_path / name).stat().st_mode & 0o777 == default_mode()


def test_checked_in_sample_report_is_complete_and_small():
  folder = Path(__file__).parents[2] / 'docs' / 'sample_report'
  report = (folder / 'report.md').read_text()
  result = json.loads((folder / 'results.json').read_text())
  runs = result['runs']
  assert {r['status'] for r in runs} == {'ok'}
  assert {r['target'] for r in runs} == {'cpu', 'tpu:v5e', 'gpu:h100'}
  assert {r['kind'] for r in runs} == {'model', 'layer'}
  for name in result['plots']:
    assert f'![{name}]({name})' in report and (folder / name).exists()
  for r in runs:
    if r['kind'] == 'model':
      assert f"]({r['id']}/reconciliation.md)" in report
      assert (folder / r['id'] / 'reconciliation.md').exists()
      assert r['reconciliation']['unexplained'] == 0
  assert '## Worked example' in report
  assert sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) < 1_000_000


def test_too_large_for_the_target_is_reported(tmp_path):
  config = BenchConfig(models=('mobilenet_v2',), targets=('tpu:v5e',), batches=(16384,))
  (run,) = run_bench(config, tmp_path)['runs']
  assert run['status'] == 'does not fit'
  assert 'Ran out of memory on HBM' in run['reason']


def test_too_large_for_a_gpu_is_reported(tmp_path):
  """Deviceless GPU compilation does not check memory; the suite compares with the target's."""
  config = BenchConfig(models=('mobilenet_v3_small',), targets=('gpu:a100',), modes=('train',),
                       batches=(8192,), peaks=False, plots=False, write_hlo=False)
  (run,) = run_bench(config, tmp_path)['runs']
  assert run['status'] == 'does not fit' and run['memory_bytes'] > run['memory_limit_bytes']
  assert run['reason'].startswith('needs ') and 'NVIDIA A100' in run['reason']
  assert '40.00 GiB' in run['reason'] or '39.' in run['reason']


def test_cli_bench(tmp_path, capsys):
  out = tmp_path / 'bench'
  assert main(['bench', '--models', 'mobilenet_v3_small', '--targets', 'cpu', '--image-size', '32',
               '--repeats', '1', '--dtype', 'bf16', '--out', str(out), '--quiet']) == 0
  assert '| mobilenet_v3_small | cpu | infer | 1 | bfloat16 |' in capsys.readouterr().out
  assert (out / 'results.json').exists()


@pytest.mark.parametrize('argv,message', [
    (['bench', '--targets', 'cpu,tpu:v9'], "unknown target 'tpu:v9'"),
    (['bench', '--models', 'resnet*'], "no model matches 'resnet*'"),
    (['bench', '--dtype', 'fp8'], "unknown dtype 'fp8'"),
    (['bench', '--mode', 'predict'], "unknown mode 'predict'"),
    (['bench', '--batch', '0'], 'expected a positive integer, got 0'),
])
def test_cli_bench_bad_input(argv, message, capsys, tmp_path):
  with pytest.raises(SystemExit) as exc:
    main(argv + ['--out', str(tmp_path)])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert message in err and 'Traceback' not in err


def test_worked_example_layers_on_every_target(tmp_path):
  """The mission's worked example: the 8.69x parameter saving, and what compilation makes of
  it on each target (flops counted by XLA on cpu/tpu, from the HLO on the deviceless GPU)."""
  config = BenchConfig(models=(), layers=('worked',), targets=('cpu', 'tpu:v5e', 'gpu:h100'),
                       repeats=1, layer_strategies=('grouped',), peaks=False, plots=False,
                       write_hlo=False)
  result = run_bench(config, tmp_path)
  runs = result['runs']
  assert {r['status'] for r in runs} == {'ok'} and len(runs) == 4 * 3
  by = {(r['model'].split('_')[0], r['target']): r for r in runs}
  assert by['worked/standardk3', 'cpu']['params'] == 589_824
  assert by['worked/separablek3', 'cpu']['params'] == 67_840
  worked = {w['target']: w for w in worked_example_rows(runs)}
  assert set(worked) == {'cpu', 'tpu:v5e', 'gpu:h100'}
  for w in worked.values():
    assert round(w['params'], 2) == 8.69 and w['macs'] == pytest.approx(8.69, abs=0.01)
    assert 8 < w['flops'] < 10  # the flop saving survives compilation everywhere
  assert worked['gpu:h100']['flops_source'] == 'hlo' and worked['cpu']['latency'] > 0
  report = (tmp_path / 'report.md').read_text()
  assert '## Worked example' in report and '| gpu:h100 | 1 | float32 | grouped | 8.69x' in report
