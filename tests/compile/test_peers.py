"""The peers benchmark (sepnets vs PyTorch and Keras) on a tiny configuration: it runs, the two
models compute the same function, and the ratios are what the times say."""

import os

import pytest

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sepnets.compile.peers import (MAX_REPEATS, PeersConfig, format_markdown,  # noqa: E402
                                   repeats_for, run_peers)
from sepnets.compile.timing import side_by_side  # noqa: E402
from sepnets.runtime import cpu_compiler_options  # noqa: E402


def test_peers_measures_identical_models_side_by_side():
  config = PeersConfig(models=('mobilenet_v2',), image_size=32, infer_batches=(2,),
                       train_batch=2, warmup=1, repeats=1, pause_s=0.005, min_time_s=0.2)
  result = run_peers(config)
  rows = result['rows']
  assert [(r['workload'], r['batch']) for r in rows] == [('infer', 2), ('train', 2)]
  for r in rows:
    # as many calls as the slower library's sizing call says fill 0.2 s
    assert r['repeats'] == repeats_for(r['sizing_call_s'], config) <= MAX_REPEATS
    assert r['sepnets_s'] > 0 and r['torch_s'] > 0 and r['keras_s'] > 0
    assert r['ratio_torch'] == pytest.approx(r['sepnets_s'] / r['torch_s'])
    assert r['ratio_keras'] == pytest.approx(r['sepnets_s'] / r['keras_s'])
    assert r['sepnets_steady_s'] > 0 and r['torch_steady_s'] > 0  # timed back to back too
    assert r['ratio_torch_steady'] == pytest.approx(r['sepnets_steady_s'] / r['torch_steady_s'])
    assert r['compile_s'] > 0
    assert r['max_logit_diff'] < 1e-3  # the same weights give the same logits
  text = format_markdown(result, 'python benchmarks/peers.py')
  assert '| mobilenet_v2 | inference, batch 2 |' in text and 'sepnets / PyTorch' in text
  assert 'Keras' in text and result['metadata']['versions']['torch']
  assert 'an untimed 5 ms before each' in text
  assert 'or more calls (as many as take 0.2 s, at most 200: the last column)' in text
  assert text.count(' | calls timed |') == 1
  assert 'sepnets / PyTorch, after a pause | ' in text
  assert 'sepnets / PyTorch, back to back |' in text
  assert 'Back to back: ' in text
  options = result['metadata']['sepnets_compiler_options']
  assert options == cpu_compiler_options()  # the tests run on the CPU
  assert ('compiler options `xla_cpu_prefer_vector_width=512`' if options else
          'compiler options XLA defaults') in text


@pytest.mark.slow
def test_peers_in_bfloat16_mixed_precision():
  """bf16 compute with fp32 parameters in both libraries: the logits agree to bf16's
  precision (not fp32's), and the table says which precision it timed."""
  config = PeersConfig(models=('mobilenet_v3_large',), image_size=32, infer_batches=(2,),
                       train_batch=2, peers=('torch',), warmup=0, repeats=1, pause_s=0,
                       dtype='bfloat16', min_time_s=0)
  result = run_peers(config)
  assert result['dtype'] == 'bfloat16' and result['metadata']['torch_device'] == 'cpu'
  diff = result['rows'][0]['max_logit_diff']
  assert 1e-5 < diff < 0.25  # bf16 rounding shows, a wrong weight or dtype would not stay small
  assert all(r['sepnets_s'] > 0 and r['torch_s'] > 0 for r in result['rows'])
  text = format_markdown(result)
  assert text.startswith('# sepnets vs PyTorch: 32x32, bf16')
  assert 'bf16 mixed precision (fp32 parameters, bf16 compute' in text
  assert 'Keras' not in text  # no Keras in this run


def test_pytorch_runs_where_jax_runs(monkeypatch):
  import torch
  from sepnets.compile import peers
  assert peers.torch_device() == 'cpu'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  if not torch.cuda.is_available():
    with pytest.raises(RuntimeError, match='JAX runs on the GPU but this PyTorch'):
      peers.torch_device()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  with pytest.raises(RuntimeError, match="runs on the CPU or an NVIDIA GPU; JAX runs on 'tpu'"):
    peers.torch_device()


def test_short_calls_are_timed_more_often():
  config = PeersConfig(repeats=5, min_time_s=1.0)
  assert repeats_for(0.5, config) == 5  # long calls: --repeats
  assert repeats_for(0.1, config) == 10  # 1 s of calls
  assert repeats_for(0.012, config) == 84
  assert repeats_for(1e-5, config) == MAX_REPEATS == 200
  assert repeats_for(0.001, PeersConfig(repeats=5, min_time_s=0)) == 5  # min_time_s 0: off


def test_cpu_compiler_options_compile_the_same_function():
  # 512-bit vectors where the CPU has AVX-512 (XLA's own loops); the values stay the same
  has_avx512 = ' avx512f' in open('/proc/cpuinfo').read()
  assert cpu_compiler_options() == ({'xla_cpu_prefer_vector_width': 512} if has_avx512 else {})
  x = jnp.linspace(-3.0, 3.0, 4099)
  f = lambda v: jnp.tanh(v) * jnp.exp(-v * v) + jnp.cumsum(v)  # noqa: E731
  wide = jax.jit(f, compiler_options=cpu_compiler_options()).lower(x).compile()
  np.testing.assert_allclose(wide(x), jax.jit(f)(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('kwargs, message', [
    (dict(models=('resnet50',)), 'no peer definition'),
    (dict(peers=('mxnet',)), 'unknown peer'),
    (dict(image_size=16), 'at least 32'),
    (dict(infer_batches=(0,)), 'positive'),
    (dict(infer_batches=()), 'at least one inference batch'),
    (dict(pause_s=-0.1), 'pause_s must be >= 0'),
    (dict(pause_s=float('nan')), 'pause_s must be >= 0'),
    (dict(dtype='float16'), "unknown dtype 'float16'"),
    (dict(min_time_s=-1.0), 'min_time_s must be >= 0'),
])
def test_bad_peers_config_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    PeersConfig(**kwargs)


def test_side_by_side_interleaves_in_alternating_order():
  log = []
  calls = {name: (lambda name=name: log.append(name)) for name in ('a', 'b')}
  timed = side_by_side(calls, warmup=1, repeats=4, pause_s=0)
  assert log == ['a', 'b'] + ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']  # warm-up, then rounds
  assert set(timed) == {'a', 'b'} and all(t.repeats == 4 for t in timed.values())
  assert all(0 <= t.min_s <= t.median_s for t in timed.values())
  with pytest.raises(ValueError, match='repeats must be >= 1'):
    side_by_side(calls, warmup=0, repeats=0)


def test_side_by_side_back_to_back_leads_each_timed_call_with_its_own():
  log = []
  calls = {name: (lambda name=name: log.append(name)) for name in ('a', 'b')}
  timed = side_by_side(calls, warmup=0, repeats=2, pause_s=0, lead_in=1)
  assert log == ['a', 'a', 'b', 'b', 'b', 'b', 'a', 'a']  # an untimed call before each timed
  assert all(t.repeats == 2 for t in timed.values())


def test_peers_command_names_a_bad_dtype():
  import subprocess
  import sys
  from pathlib import Path
  script = Path(__file__).resolve().parents[2] / 'benchmarks' / 'peers.py'
  done = subprocess.run([sys.executable, str(script), '--dtype', 'float16', '--layers', 'none'],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'SEPNETS_MALLOC': 'default'})
  assert done.returncode == 2
  assert "unknown dtype 'float16'; expected one of float32, bfloat16" in done.stderr
  assert 'Traceback' not in done.stderr
