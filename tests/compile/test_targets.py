"""Targets, lowering, cost extraction and the HLO census, on CPU and deviceless TPUs."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sepnets import costs
from sepnets.compile.census import hlo_census
from sepnets.compile.hlo_cost import hlo_cost
from sepnets.compile.lowering import Workload, compile_workload, model_workload
from sepnets.compile.targets import TargetUnavailable, check_available, parse_target
from sepnets.layers import DepthwiseConv, PointwiseConv, StandardConv

TARGETS = ['cpu', 'tpu:v4', 'tpu:v5e', 'tpu:v5p', 'tpu:v6e']
GPU_TARGETS = ['gpu:a100', 'gpu:h100', 'gpu:h200']


def test_parse_target():
  assert parse_target('cpu').aot is False
  v5e = parse_target('tpu:v5e')
  assert (v5e.platform, v5e.topology, v5e.aot) == ('tpu', 'v5e:1x1', True)
  assert parse_target('tpu:v5e:2x2').topology == 'v5e:2x2'
  h100 = parse_target('gpu:h100')
  assert (h100.platform, h100.topology, h100.aot) == ('gpu', 'h100_sxm.txtpb', True)
  assert parse_target('gpu').aot is False
  for bad in ('tpu', 'tpu:v9', 'cuda', 'cpu:0', '', 'gpu:v100', 'gpu:h100:2'):
    with pytest.raises(ValueError, match='unknown target .*expected one of cpu, gpu, tpu:v4'):
      parse_target(bad)


def test_gpu_targets_describe_their_devices():
  for name, kind, gib in [('gpu:a100', 'NVIDIA A100-SXM4-40GB', 39.4),
                          ('gpu:h100', 'NVIDIA H100 80GB HBM3', 79.1),
                          ('gpu:h200', 'NVIDIA H200', 140.4)]:
    target = parse_target(name)
    check_available(target)
    assert target.device_kind == kind
    assert round(target.memory_bytes / 2**30, 1) == gib
  assert parse_target('tpu:v5e').memory_bytes == 16 * 2**30


def test_no_local_gpu_is_reported():
  with pytest.raises(TargetUnavailable, match="gpu: no GPU on this machine"):
    check_available(parse_target('gpu'))


def test_missing_cuda_plugin_is_reported(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name.startswith('jax_plugins') else real(name, *a))
  with pytest.raises(TargetUnavailable, match=r"the CUDA plugin is not installed \(pip install 'sepnets\[gpu\]'\)"):
    check_available(parse_target('gpu:h100'))


def test_missing_libtpu_is_reported(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'libtpu' else real(name, *a))
  with pytest.raises(TargetUnavailable, match=r"tpu:v5e: libtpu is not installed \(pip install 'sepnets\[tpu\]'\)"):
    check_available(parse_target('tpu:v5e'))


def test_bad_topology_is_reported():
  with pytest.raises(TargetUnavailable, match="libtpu cannot describe topology 'v5e:3x7'"):
    check_available(parse_target('tpu:v5e:3x7'))


def _layer_workload(layer, in_shape):
  graphdef, state = nnx.split(layer)
  fn = lambda state, x: nnx.merge(graphdef, state)(x)
  return Workload('layer', fn, (state, jax.ShapeDtypeStruct(in_shape, jnp.float32)), {})


EXACT_CASES = [  # realistic shapes (abstract: nothing is allocated or run)
    (lambda: DepthwiseConv(256, 3, strategy='grouped', rngs=nnx.Rngs(0)), (8, 56, 56, 256)),
    (lambda: DepthwiseConv(144, 3, stride=2, strategy='grouped', rngs=nnx.Rngs(0)), (8, 56, 56, 144)),
    (lambda: DepthwiseConv(128, 5, strategy='grouped', rngs=nnx.Rngs(0)), (8, 28, 28, 128)),
    (lambda: StandardConv(64, 64, 3, padding='symmetric', impl='conv', rngs=nnx.Rngs(0)), (8, 28, 28, 64)),
    (lambda: StandardConv(3, 32, 3, stride=2, impl='conv', rngs=nnx.Rngs(0)), (8, 224, 224, 3)),
    (lambda: PointwiseConv(256, 256, rngs=nnx.Rngs(0)), (8, 56, 56, 256)),
]


@pytest.mark.parametrize('target', TARGETS)
def test_conv_flops_exact_on_every_target(target):
  """2 x valid-tap MACs is the compiled flop count for CPU and every TPU generation."""
  for make, shape in EXACT_CASES:
    layer = nnx.eval_shape(make)
    (row,) = costs.layer_costs(layer, shape)
    result = compile_workload(_layer_workload(layer, shape), parse_target(target))
    assert result.stats.flops == 2 * row.macs_valid, (target, row.kind, shape)
    assert result.stats.bytes_accessed > 0
    assert result.stats.argument_bytes >= 4 * row.in_shape[0] * row.in_shape[1] * row.in_shape[2] * row.in_shape[3]
    if target.startswith('tpu'):
      assert result.stats.optimal_seconds is not None and result.stats.optimal_seconds > 0
      assert result.device_kind.startswith('TPU')


@pytest.mark.parametrize('target', GPU_TARGETS)
def test_conv_flops_exact_on_deviceless_gpus(target):
  """No cost analysis on a deviceless GPU: the cuDNN custom calls are counted from the HLO."""
  for make, shape in EXACT_CASES:
    layer = nnx.eval_shape(make)
    (row,) = costs.layer_costs(layer, shape)
    result = compile_workload(_layer_workload(layer, shape), parse_target(target))
    assert result.stats.flops is None
    flops = hlo_cost(result.hlo).flops
    if row.in_shape[1] == row.out_shape[1]:
      assert flops == 2 * row.macs_valid, (target, row.kind, shape)
    else:  # stride 2, 'same' pads 0 before and 1 after: cuDNN may get an explicitly padded input
      assert 2 * row.macs_valid <= flops <= 2 * row.macs, (target, row.kind, shape)
    assert result.stats.argument_bytes > 0 and result.stats.temp_bytes is not None
    assert result.census.custom_calls.get('__cudnn$convForward', 0) + \
        result.census.custom_calls.get('__cublas$gemm', 0) + result.census.fusions.get('kCustom', 0) >= 1


@pytest.mark.parametrize('target', TARGETS[1:])
def test_tpu_rewrites_a_narrow_depthwise_conv(target):
  """Known (jax 0.10.2, libtpu 0.0.52): a depthwise conv with fewer channels than the TPU's
  128 lanes is rewritten (bf16 relayout, padded windows) and costs 2.56x the valid-tap
  flops, while XLA:CPU counts it exactly. The reconciliation must account for this."""
  layer = nnx.eval_shape(lambda: DepthwiseConv(32, 3, strategy='grouped', rngs=nnx.Rngs(0)))
  (row,) = costs.layer_costs(layer, (2, 16, 16, 32))
  tpu = compile_workload(_layer_workload(layer, (2, 16, 16, 32)), parse_target(target))
  cpu = compile_workload(_layer_workload(layer, (2, 16, 16, 32)), parse_target('cpu'))
  assert cpu.stats.flops == 2 * row.macs_valid
  assert tpu.stats.flops > 2 * row.macs


@pytest.mark.parametrize('strategy,cpu_kinds,cpu_calls,tpu_kinds', [
    ('grouped', {'depthwise': 1}, {}, {'depthwise': 1}),
    ('shift', {}, {}, {}),  # multiply-adds: no convolution anywhere
    # auto: the native kernel's custom call on CPU, the grouped conv elsewhere
    ('auto', {'depthwise': 1}, {'sepnets_dw_conv': 1}, {'depthwise': 1}),
])
def test_census_sees_the_strategy_per_target(strategy, cpu_kinds, cpu_calls, tpu_kinds):
  layer = DepthwiseConv(16, 3, strategy=strategy, rngs=nnx.Rngs(0))
  workload = _layer_workload(layer, (1, 12, 12, 16))
  cpu = compile_workload(workload, parse_target('cpu'))
  tpu = compile_workload(workload, parse_target('tpu:v5e'))
  assert cpu.census.convolutions == cpu_kinds
  assert cpu.census.custom_calls == cpu_calls
  assert tpu.census.convolutions == tpu_kinds
  assert 'stablehlo' in cpu.stablehlo and 'HloModule' in cpu.hlo


def test_census_classifies_conv_kinds():
  layers = {'dense': StandardConv(8, 8, 3, rngs=nnx.Rngs(0)),
            'grouped': StandardConv(8, 8, 3, groups=2, rngs=nnx.Rngs(0)),
            'depthwise': DepthwiseConv(8, 3, multiplier=2, strategy='grouped', rngs=nnx.Rngs(0))}
  for kind, layer in layers.items():
    result = compile_workload(_layer_workload(layer, (1, 8, 8, 8)), parse_target('cpu'))
    assert result.census.convolutions == {kind: 1}, kind
    assert hlo_census(result.hlo) == result.census


@pytest.mark.parametrize('target', ['cpu', 'tpu:v5e'])
def test_model_infer_and_train_step_compile(target):
  infer = compile_workload(model_workload('mobilenet_v3_small', mode='infer', batch=2, image_size=32,
                                          strategy='grouped'), parse_target(target))
  train = compile_workload(model_workload('mobilenet_v3_small', mode='train', batch=2, image_size=32,
                                          strategy='grouped'), parse_target(target))
  rows = costs.layer_costs(nnx.eval_shape(lambda: __import__('sepnets').create_model(
      'mobilenet_v3_small', rngs=nnx.Rngs(0), strategy='grouped')), (2, 32, 32, 3))
  assert infer.stats.flops >= 2 * costs.totals(rows).macs_valid
  assert train.stats.flops > 2 * infer.stats.flops  # backward costs about twice the forward
  assert infer.census.convolutions['depthwise'] == 11
  assert train.stats.temp_bytes > infer.stats.temp_bytes


def test_model_workload_bad_input():
  with pytest.raises(ValueError, match="unknown mode 'predict'"):
    model_workload('mobilenet_v2', mode='predict')
  with pytest.raises(ValueError, match='batch must be a positive integer'):
    model_workload('mobilenet_v2', batch=0)
  with pytest.raises(ValueError, match="unknown model 'mobilenet'"):
    model_workload('mobilenet')
