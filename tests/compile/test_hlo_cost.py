"""Counting flops from optimized HLO, and the per-layer reconciliation built on it."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from sepnets import create_model
from sepnets.blocks.inverted_residual import InvertedResidual
from sepnets.compile.hlo_cost import Window, conv_flops, hlo_cost, parse_instruction, parse_window
from sepnets.compile.lowering import compile_workload, model_workload
from sepnets.compile.reconcile import attribute, format_reconciliation, reconcile
from sepnets.compile.targets import parse_target
from sepnets.summary import model_layer_costs


def _small(x, w, w2):
  y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               feature_group_count=8)
  y = jnp.maximum(y * 2 + 1, 0)
  y = jnp.einsum('nhwc,cd->nhwd', y, w2)
  return jnp.tanh(y).mean((1, 2))


def test_hand_counted_function_matches_xla_exactly():
  args = (jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 1, 8)), jnp.ones((8, 16)))
  compiled = jax.jit(_small).lower(*args).compile()
  cost = hlo_cost(compiled.as_text())
  conv = 2 * 25 * 25 * 8 * 2  # valid taps per dim: 9 x 3 - 2 = 25; 8 channels; batch 2
  dot = 2 * 162 * 16 * 8
  elementwise = 3 * 1296 + 32  # *2, +1, max on the conv output; /81 on the mean
  reduce = 2592 - 32  # one add per reduced element
  assert cost.flops == conv + dot + elementwise + reduce == 67_952
  assert cost.transcendentals == 2592  # tanh
  xla = compiled.cost_analysis()
  assert cost.flops == xla['flops'] and cost.transcendentals == xla['transcendentals']
  assert cost.bytes_accessed == xla['bytes accessed']
  assert cost.flops_by_category == {'convolution': conv, 'elementwise': elementwise,
                                    'dot': dot, 'reduce': reduce}


def test_conv_formula_counts_valid_taps():
  # 'same' 3x3 over 4 wide: 4 x 3 - 2 = 10 valid taps per dim
  w = Window(size=(3, 3), stride=(1, 1), pad=((1, 1), (1, 1)), lhs_dilate=(1, 1), rhs_dilate=(1, 1))
  assert conv_flops((1, 4, 4, 2), (3, 3, 2, 5), (1, 4, 4, 5), 'b01f_01io->b01f', w) == 2 * 2 * 5 * 100
  assert conv_flops((1, 4, 4, 2), (3, 3, 1, 2), (1, 4, 4, 2), 'b01f_01io->b01f', w, 2) == 2 * 2 * 100
  # lhs dilation (a strided conv's input gradient): taps that land on inserted zeros or padding
  # are skipped. 4 inputs dilated to 7, padded to 9: each input reaches 3 outputs per dim, less
  # one for each edge input -> 3 + 3 + 2 + 2 = 10 per dim.
  dil = parse_window('size=3x3 pad=1_1x1_1 lhs_dilate=2x2', 2)
  assert dil.lhs_dilate == (2, 2) and dil.pad == ((1, 1), (1, 1))
  assert conv_flops((1, 4, 4, 1), (3, 3, 1, 1), (1, 7, 7, 1), 'b01f_01io->b01f', dil) == 2 * 10 * 10


def test_parse_instruction_handles_tuples_and_attributes():
  inst = parse_instruction(
      '  %cudnn-conv.1 = (f32[2,9,9,8]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %w), '
      'window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, feature_group_count=8, '
      'custom_call_target="__cudnn$convForward", metadata={op_name="jit(f)/conv"}')
  assert inst.opcode == 'custom-call' and inst.is_tuple and inst.operands == ('x.1', 'w')
  assert [a.dims for a in inst.shapes] == [(2, 9, 9, 8), (0,)]
  assert inst.attr('dim_labels') == 'b01f_o01i->b01f'
  assert inst.attr('custom_call_target') == '__cudnn$convForward'
  assert inst.attr('window') == 'size=3x3 pad=1_1x1_1'


def test_no_entry_is_an_error():
  with pytest.raises(ValueError, match='no ENTRY computation'):
    hlo_cost('HloModule empty\n')


@pytest.mark.parametrize('target', ['cpu', 'tpu:v5e'])
@pytest.mark.parametrize('mode', ['infer', 'train'])
def test_zoo_counts_agree_with_xla(target, mode):
  """Flops and transcendentals agree with XLA's own analysis up to its float32 accumulator."""
  workload = model_workload('mobilenet_v3_small', mode=mode, batch=2, image_size=32,
                            strategy='grouped')
  result = compile_workload(workload, parse_target(target))
  cost = hlo_cost(result.hlo)
  assert cost.transcendentals == result.stats.transcendentals
  assert abs(cost.flops - result.stats.flops) <= 1e-5 * result.stats.flops
  if target == 'cpu':  # TPU counts bytes over its padded tile layouts
    assert abs(cost.bytes_accessed - result.stats.bytes_accessed) <= 1e-5 * result.stats.bytes_accessed


def _reconciled_at(model, mode, strategy, target, batch=2):
  result = compile_workload(model_workload(model, mode=mode, batch=batch, image_size=32,
                                           strategy=strategy), parse_target(target))
  rows, _ = model_layer_costs(model, image_size=32, batch=batch, strategy=strategy)
  return reconcile(hlo_cost(result.hlo), rows, result.stats.flops), rows


def _reconciled(model, mode, strategy, target):
  return _reconciled_at(model, mode, strategy, target)


@pytest.mark.parametrize('target', ['cpu', 'gpu:h100'])
def test_every_forward_conv_is_exactly_two_valid_macs(target):
  rec, rows = _reconciled('mobilenet_v2', 'infer', 'grouped', target)
  convs = [layer for layer in rec.layers if layer.kind != 'batchnorm']
  assert all(layer.status == 'exact' for layer in convs), [l.path for l in convs if l.status != 'exact']
  assert rec.unexplained == 0
  summary = rec.summary()
  assert summary['forward_matmul'] == 2 * summary['macs_valid'] == 2 * sum(r.macs_valid for r in rows)
  assert summary['padding_macs'] == sum(r.macs - r.macs_valid for r in rows) > 0


def test_cpu_depthwise_filter_gradient_is_a_dense_conv():
  """XLA:CPU computes a depthwise layer's kernel gradient as a dense C x C convolution: its
  backward costs (C + 1) x the forward (C for the filter, 1 for the input gradient)."""
  rec, rows = _reconciled('mobilenet_v2', 'train', 'grouped', 'cpu')
  layers = {layer.path: layer for layer in rec.layers}
  rows = {r.path: r for r in rows}
  for layer in (l for l in rec.layers if l.kind == 'depthwise'):
    assert layer.backward_matmul == (rows[layer.path].in_shape[-1] + 1) * layer.expected, layer.path
  assert layers['stem.conv'].backward_matmul == layers['stem.conv'].expected  # no input gradient
  for layer in rec.layers:
    if layer.kind == 'pointwise':
      assert layer.backward_matmul == 2 * layer.expected
  assert rec.unexplained == 0
  assert abs(rec.hlo_flops - rec.xla_flops) <= 1e-5 * rec.xla_flops
  text = format_reconciliation(rec)
  assert '| stem.conv | standard |' in text and 'exact' in text


def test_attribute_reads_scopes_and_autodiff():
  paths = {'stages.0.0.conv_dw.conv', 'stem.conv'}
  assert attribute('jit(train_step)/jvp(stem.conv)/conv_general_dilated', paths) == ('stem.conv', False)
  assert attribute('jit(t)/transpose(jvp(stages.0.0.conv_dw.conv))/mul', paths) == (
      'stages.0.0.conv_dw.conv', True)
  assert attribute('jit(t)/relu6/min', paths) == (None, False)


def test_dot_without_metadata_is_attributed_by_shape():
  """At batch 1 XLA:CPU drops the classifier dot's metadata; shapes still place it."""
  rec, _ = _reconciled_at('mobilenet_v1', 'infer', 'grouped', 'cpu', batch=1)
  layers = {layer.path: layer for layer in rec.layers}
  assert layers['classifier'].status == 'exact'
  assert 'dot' not in rec.outside and rec.unexplained == 0
  assert rec.summary()['layers_exact'] == rec.summary()['layers'] == 28


def test_fusion_reads_a_parameter_once_per_broadcast():
  """XLA's rule: every broadcast of a fusion parameter reads it again; other uses share."""
  hlo = '''HloModule m

%fused (p0: f32[8], p1: f32[4,8]) -> f32[4,8] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[4,8]{1,0} parameter(1)
  %b0 = f32[4,8]{1,0} broadcast(%p0), dimensions={1}
  %b1 = f32[4,8]{1,0} broadcast(%p0), dimensions={1}
  %m = f32[4,8]{1,0} multiply(%p1, %b0)
  %a = f32[4,8]{1,0} add(%m, %p1)
  ROOT %r = f32[4,8]{1,0} add(%a, %b1)
}

ENTRY %main (x: f32[8], y: f32[4,8]) -> f32[4,8] {
  %x = f32[8]{0} parameter(0)
  %y = f32[4,8]{1,0} parameter(1)
  ROOT %f = f32[4,8]{1,0} fusion(%x, %y), kind=kLoop, calls=%fused
}
'''
  # p0 twice (two broadcasts), p1 once (two plain uses share a read), the output once
  assert hlo_cost(hlo).bytes_accessed == 2 * 32 + 128 + 128


def test_native_depthwise_calls_count_as_the_convolution():
  """The native kernels' custom calls count 2 x valid MACs (forward, input gradient and tap
  gradient alike), and BatchNorm's native sums 3 flops per element; XLA counts none, and
  differs from the HLO count by exactly those."""
  rec, rows = _reconciled('mobilenet_v2', 'train', 'native', 'cpu')
  result = compile_workload(model_workload('mobilenet_v2', mode='train', batch=2, image_size=32,
                                           strategy='native'), parse_target('cpu'))
  cost = hlo_cost(result.hlo)
  native = [c for c in cost.convolutions if c.kind.startswith('native')]
  depthwise = [layer for layer in rec.layers if layer.kind == 'depthwise']
  assert depthwise and all(layer.status == 'exact' for layer in depthwise)
  for layer in depthwise:  # the input gradient plus the tap gradient
    assert layer.backward_matmul == 2 * layer.expected, layer.path
  assert len(native) == 3 * len(depthwise)
  norms = [layer for layer in rec.layers if layer.kind == 'batchnorm']
  assert result.census.custom_calls == {'sepnets_dw_conv': 2 * len(depthwise),
                                        'sepnets_dw_tap_grad': len(depthwise),
                                        'sepnets_channel_sums': 2 * len(norms)}
  sums = [op for op in cost.ops if op.opcode == 'custom-call' and op.category == 'reduce']
  assert len(sums) == 2 * len(norms)
  # up to XLA's float32 accumulator, as in test_zoo_counts_agree_with_xla
  assert abs(cost.flops - result.stats.flops - sum(c.flops for c in native)
             - sum(op.flops for op in sums)) <= 1e-5 * result.stats.flops
  assert rec.unexplained == 0


def test_fused_eval_depthwise_calls_count_as_the_convolution():
  """In eval mode each depthwise layer is one fused native call (conv, BatchNorm, activation),
  counted as its convolution: every forward conv still reconciles exactly."""
  rec, _ = _reconciled('mobilenet_v3_small', 'infer', 'auto', 'cpu')
  result = compile_workload(model_workload('mobilenet_v3_small', mode='infer', batch=2,
                                           image_size=32, strategy='auto'), parse_target('cpu'))
  depthwise = [layer for layer in rec.layers if layer.kind == 'depthwise']
  assert depthwise and all(layer.status == 'exact' for layer in depthwise)
  # after an expansion conv, that conv's BatchNorm and activation are in the call too
  model = nnx.eval_shape(lambda: create_model('mobilenet_v3_small', rngs=nnx.Rngs(0)))
  expanded = sum(isinstance(m, InvertedResidual) and m.conv_pw is not None
                 for _, m in nnx.iter_graph(model))
  assert 0 < expanded < len(depthwise)
  assert result.census.custom_calls == {'sepnets_dw_conv_bias_act': len(depthwise) - expanded,
                                        'sepnets_dw_act_conv_bias_act': expanded}
  assert rec.unexplained == 0
