"""The analytic cost model against the mission's numbers, NNX's parameter count and XLA."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets import costs
from sepnets.compile.analysis import compile_stats, lower_and_compile, stats_of
from sepnets.compile.hlo_cost import hlo_cost
from sepnets.layers import (ConvNormAct, DepthwiseConv, PointwiseConv, SeparableConv,
                            SqueezeExcite, StandardConv)


def nnx_param_count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(factory):
  return nnx.eval_shape(factory)


def test_worked_example():
  standard = costs.standard_params(3, 256, 256)
  separable = costs.separable_params(3, 256, 256)
  assert (standard, separable) == (589_824, 67_840)
  assert round(standard / separable, 2) == 8.69
  assert costs.depthwise_params(3, 256) == 2_304
  assert costs.pointwise_params(256, 256) == 65_536


LAYER_FACTORIES = {
    'standard': lambda k, c, o, s, p, m, b: StandardConv(c, o, k, stride=s, padding=p, use_bias=b, rngs=nnx.Rngs(0)),
    'grouped': lambda k, c, o, s, p, m, b: StandardConv(c, o, k, stride=s, padding=p, groups=2, use_bias=b, rngs=nnx.Rngs(0)),
    'depthwise': lambda k, c, o, s, p, m, b: DepthwiseConv(c, k, multiplier=m, stride=s, padding=p, use_bias=b, rngs=nnx.Rngs(0)),
    'pointwise': lambda k, c, o, s, p, m, b: PointwiseConv(c, o, use_bias=b, rngs=nnx.Rngs(0)),
    'separable': lambda k, c, o, s, p, m, b: SeparableConv(c, o, k, stride=s, padding=p, multiplier=m, use_bias=b, rngs=nnx.Rngs(0)),
    'separable_bn': lambda k, c, o, s, p, m, b: SeparableConv(c, o, k, stride=s, padding=p, multiplier=m, mid_norm=True, mid_act='relu', rngs=nnx.Rngs(0)),
    'conv_norm_act': lambda k, c, o, s, p, m, b: ConvNormAct(c, o, k, stride=s, padding=p, rngs=nnx.Rngs(0)),
    'squeeze_excite': lambda k, c, o, s, p, m, b: SqueezeExcite(c, max(1, c // 4), rngs=nnx.Rngs(0)),
}


def expected_params(kind, k, c, o, m, bias):
  """The mission's formulas, written out independently of costs.py."""
  if kind == 'standard':
    return k * k * c * o + bias * o
  if kind == 'grouped':
    return k * k * (c // 2) * o + bias * o
  if kind == 'depthwise':
    return k * k * c * m + bias * c * m
  if kind == 'pointwise':
    return c * o + bias * o
  if kind == 'separable':
    return k * k * c * m + c * m * o + bias * (c * m + o)
  if kind == 'separable_bn':
    return k * k * c * m + 2 * c * m + c * m * o
  if kind == 'conv_norm_act':
    return k * k * c * o + 2 * o
  r = max(1, c // 4)
  return c * r + r + r * c + c


@pytest.mark.parametrize('kind', sorted(LAYER_FACTORIES))
@pytest.mark.parametrize('k,c,o,s,p,m,bias', [
    (3, 8, 16, 1, 'same', 1, False), (5, 6, 4, 2, 'symmetric', 2, True),
    (3, 16, 16, 2, 'same', 3, False), (7, 4, 8, 1, 'valid', 1, True),
])
def test_analytic_params_equal_nnx_count(kind, k, c, o, s, p, m, bias):
  module = abstract(lambda: LAYER_FACTORIES[kind](k, c, o, s, p, m, bias))
  rows = costs.layer_costs(module, (1, 16, 16, c))
  assert costs.totals(rows).params == nnx_param_count(module) == expected_params(kind, k, c, o, m, bias)


def test_layer_table_counts_batchnorm_statistics_separately():
  module = SeparableConv(8, 16, 3, mid_norm=True, rngs=nnx.Rngs(0))
  rows = costs.layer_costs(module, (2, 8, 8, 8))
  assert [r.path for r in rows] == ['dw', 'norm', 'pw']
  assert [r.kind for r in rows] == ['depthwise', 'batchnorm', 'pointwise']
  assert costs.totals(rows).stats == 16
  stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.BatchStat)))
  assert costs.totals(rows).stats == stats
  assert rows[0].act_bytes_in == 2 * 8 * 8 * 8 * 4
  assert 'total' in costs.format_table(rows)


def test_depthwise_worked_example_valid_taps():
  """XLA excludes padded taps: 112,869,376 flops, not 2 x 57,802,752."""
  pads = ((1, 1), (1, 1))
  macs, valid = costs.conv_macs((8, 56, 56, 256), (3, 3), 256, strides=(1, 1),
                                dilation=(1, 1), pads=pads, groups=256)
  assert macs == 57_802_752
  assert 2 * valid == 112_869_376


XLA_CASES = [  # (kind, input NHWC, kernel, out_chs, stride, padding, multiplier, dilation)
    ('depthwise', (8, 56, 56, 256), 3, 256, 1, 'same', 1, 1),
    *[('depthwise', (2, h, h + 3, 8), k, 8 * m, s, p, m, d)
      for (h, k, s, p, m, d) in itertools.product((9, 12), (3, 5), (1, 2), ('same', 'symmetric'), (1, 2), (1,))],
    ('depthwise', (1, 13, 13, 4), 3, 4, 1, 'same', 1, 2),
    ('depthwise', (1, 14, 14, 4), 3, 8, 2, 'symmetric', 2, 3),
    ('depthwise', (1, 10, 10, 4), 4, 4, 2, 'same', 1, 1),
    *[('standard', (2, h, h, 6), k, 10, s, p, 1, 1)
      for (h, k, s, p) in itertools.product((9, 12), (3, 5), (1, 2), ('same', 'symmetric', 'valid'))],
    ('standard', (1, 15, 15, 4), 3, 4, 1, 'same', 1, 2),
    ('pointwise', (2, 14, 14, 16), 1, 24, 1, 'valid', 1, 1),
    ('pointwise', (1, 7, 9, 96), 1, 32, 1, 'valid', 1, 1),
]


def _bare_conv(kind, in_shape, k, out_chs, s, p, m, d):
  c = in_shape[-1]
  if kind == 'depthwise':
    return DepthwiseConv(c, k, multiplier=m, stride=s, dilation=d, padding=p, strategy='grouped', rngs=nnx.Rngs(0))
  if kind == 'pointwise':
    return PointwiseConv(c, out_chs, rngs=nnx.Rngs(0))
  return StandardConv(c, out_chs, k, stride=s, dilation=d, padding=p, impl='conv', rngs=nnx.Rngs(0))


@pytest.mark.parametrize('kind,in_shape,k,out_chs,s,p,m,d', XLA_CASES)
def test_valid_tap_macs_equal_xla_flops(kind, in_shape, k, out_chs, s, p, m, d):
  layer = abstract(lambda: _bare_conv(kind, in_shape, k, out_chs, s, p, m, d))
  (row,) = costs.layer_costs(layer, in_shape)
  assert row.kind == kind
  graphdef, state = nnx.split(layer)
  stats = compile_stats(lambda state, x: nnx.merge(graphdef, state)(x), state,
                        jax.ShapeDtypeStruct(in_shape, jnp.float32))
  assert stats.flops == 2 * row.macs_valid
  if p == 'valid':
    assert row.macs == row.macs_valid
  elif k > 1:
    assert row.macs > row.macs_valid


def test_broken_tap_count_is_caught():
  """Counting padded taps (the papers' way) does not match XLA: the test above can fail."""
  layer = abstract(lambda: _bare_conv('depthwise', (2, 9, 9, 8), 3, 8, 1, 'same', 1, 1))
  (row,) = costs.layer_costs(layer, (2, 9, 9, 8))
  graphdef, state = nnx.split(layer)
  stats = compile_stats(lambda state, x: nnx.merge(graphdef, state)(x), state,
                        jax.ShapeDtypeStruct((2, 9, 9, 8), jnp.float32))
  assert stats.flops != 2 * row.macs


def test_im2col_counts_every_tap():
  """The dense conv as one dot over the K*K windows multiplies the padding taps too (the
  compiled program's other flops are the zero-padding mask over the gathered patches)."""
  shape = (2, 9, 9, 3)
  layer = abstract(lambda: StandardConv(3, 8, 3, stride=2, impl='im2col', rngs=nnx.Rngs(0)))
  (row,) = costs.layer_costs(layer, shape)
  graphdef, state = nnx.split(layer)
  compiled, seconds = lower_and_compile(lambda state, x: nnx.merge(graphdef, state)(x), state,
                                        jax.ShapeDtypeStruct(shape, jnp.float32))
  cost = hlo_cost(compiled.as_text())
  assert cost.flops == stats_of(compiled, seconds).flops  # our count is XLA's
  (dot,) = cost.dots
  assert row.macs > row.macs_valid and dot.flops == 2 * row.macs


def test_layer_costs_respect_compute_dtype():
  layer = StandardConv(4, 4, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  (row,) = costs.layer_costs(layer, (1, 8, 8, 4), dtype=jnp.bfloat16)
  assert row.act_bytes_in == 8 * 8 * 4 * 2 and row.act_bytes_out == 8 * 8 * 4 * 2
