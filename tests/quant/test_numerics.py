"""Integer grids, straight-through gradients, BatchNorm folding and per-channel vs per-tensor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.layers.norm_act import ConvNormAct
from sepnets.quant.fold import fold_batch_norm
from sepnets.quant.layers import LayerQuant, QConvNormAct
from sepnets.quant.numerics import (act_grid, channel_range_spread, fake_quant_act,
                                    fake_quant_weight, quantize_weight, sqnr_db, weight_scale)


def test_weight_grid_is_symmetric_127_and_round_trips():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 4, 8)), jnp.float32)
  levels, scale = quantize_weight(w, 8, per_channel=True)
  assert scale.shape == (8,)
  assert np.all(np.asarray(levels) == np.round(np.asarray(levels)))
  assert np.abs(levels).max() == 127  # each channel's absmax lands on +-127; -128 unused
  assert np.all(np.abs(levels).reshape(-1, 8).max(0) == 127)
  err = np.abs(np.asarray(levels * scale - w))
  assert np.all(err <= np.asarray(scale) / 2 + 1e-7)
  np.testing.assert_array_equal(fake_quant_weight(w, 8, True), levels * scale)
  _, tensor_scale = quantize_weight(w, 8, per_channel=False)
  assert tensor_scale.shape == () and float(tensor_scale) == pytest.approx(
      float(jnp.abs(w).max()) / 127)
  assert int(np.abs(quantize_weight(w, 4, False)[0]).max()) == 7  # 4 bits: [-7, 7]


def test_all_zero_channel_stays_zero():
  w = jnp.zeros((1, 1, 2, 3)).at[..., 0].set(1.0)
  np.testing.assert_allclose(weight_scale(w, 8, True), [1 / 127, 1.0, 1.0], rtol=1e-7)
  np.testing.assert_array_equal(fake_quant_weight(w, 8, True), w)


def test_activation_grid_represents_zero_exactly_and_matches_between_uint8_and_int8():
  grid = act_grid(-1.0, 3.0, 8)
  assert (grid.qmin, grid.qmax) == (0, 255)
  assert grid.zero_point == 64 and grid.lo <= -1.0 + grid.scale and grid.hi >= 3.0 - grid.scale
  x = jnp.linspace(-1.5, 3.5, 1001)
  q = fake_quant_act(x, jnp.float32(-1.0), jnp.float32(3.0), 8)
  assert float(fake_quant_act(jnp.zeros(3), jnp.float32(-1.0), jnp.float32(3.0), 8)[0]) == 0.0
  levels = np.round(np.asarray(q) / grid.scale) + grid.zero_point
  np.testing.assert_allclose(np.asarray(q), (levels - grid.zero_point) * grid.scale, atol=1e-6)
  assert levels.min() == 0 and levels.max() == 255
  inside = (x >= grid.lo) & (x <= grid.hi)
  assert np.all(np.abs(np.asarray(q - x))[inside] <= grid.scale / 2 + 1e-6)
  signed = fake_quant_act(x, jnp.float32(-1.0), jnp.float32(3.0), 8, signed=True)
  np.testing.assert_allclose(signed, q, atol=1e-6)
  # a range without 0 is widened to contain it: ReLU outputs [0.5, 2] -> grid from 0
  assert act_grid(0.5, 2.0, 8).zero_point == 0


def test_straight_through_gradient_is_one_inside_and_zero_outside():
  grid = act_grid(-1.0, 3.0, 8)
  x = jnp.linspace(-2.0, 4.0, 601)
  grad = jax.grad(lambda v: jnp.sum(fake_quant_act(v, jnp.float32(-1.0), jnp.float32(3.0),
                                                    8)))(x)
  inside = (np.asarray(x) > grid.lo + 1e-6) & (np.asarray(x) < grid.hi - 1e-6)
  outside = (np.asarray(x) < grid.lo - 1e-6) | (np.asarray(x) > grid.hi + 1e-6)
  assert np.all(np.asarray(grad)[inside] == 1.0)
  assert np.all(np.asarray(grad)[outside] == 0.0)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 1, 5)), jnp.float32)
  gw = jax.grad(lambda v: jnp.sum(fake_quant_weight(v, 8, True) * 2.0))(w)
  np.testing.assert_array_equal(gw, jnp.full_like(w, 2.0))


def randomize_bn(layer, seed, spread=1.0):
  rng = np.random.default_rng(seed)
  c = layer.bn.mean.shape[0]
  layer.bn.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
  layer.bn.var[...] = jnp.asarray(10.0 ** rng.uniform(-spread, spread, size=c), jnp.float32)
  layer.bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=c), jnp.float32)
  layer.bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)


@pytest.mark.parametrize('kind, kwargs', [
    ('depthwise', dict(in_chs=16, out_chs=16, kernel_size=3, groups=16, stride=2)),
    ('pointwise', dict(in_chs=16, out_chs=24, kernel_size=1)),
    ('standard', dict(in_chs=3, out_chs=8, kernel_size=3, stride=2, padding='symmetric')),
])
def test_folding_batch_norm_equals_the_unfolded_layer(kind, kwargs):
  layer = ConvNormAct(**kwargs, act='relu6', rngs=nnx.Rngs(0))
  randomize_bn(layer, 1)
  layer.eval()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, kwargs['in_chs'])),
                  jnp.float32)
  reference = layer(x)
  folded = QConvNormAct(layer, 'layer', LayerQuant(weight_bits=None, act_bits=None))
  assert folded.kind == kind
  folded.mode = 'quant'  # folded kernel and bias, nothing rounded
  np.testing.assert_allclose(folded(x), reference, rtol=1e-5, atol=1e-5)
  kernel, bias = fold_batch_norm(layer.conv.kernel[...], None, layer.bn)
  assert kernel.shape == layer.conv.kernel.shape and bias.shape == (kwargs['out_chs'],)


def test_per_channel_beats_per_tensor_on_a_folded_depthwise_kernel_with_spread_ranges():
  layer = ConvNormAct(32, 32, 3, groups=32, rngs=nnx.Rngs(0))
  randomize_bn(layer, 3, spread=3.0)  # variances over 6 decades, as in trained depthwise layers
  kernel, _ = fold_batch_norm(layer.conv.kernel[...], None, layer.bn)
  spread = channel_range_spread(kernel)
  assert spread > 100
  tensor_q, channel_q = fake_quant_weight(kernel, 8, False), fake_quant_weight(kernel, 8, True)
  assert sqnr_db(kernel, channel_q) >= sqnr_db(kernel, tensor_q)
  # the whole-kernel SQNR is carried by the wide channels; the narrow ones are what breaks
  worst = lambda q: min(sqnr_db(kernel[..., c], q[..., c]) for c in range(32))
  assert worst(channel_q) > 35  # every channel keeps ~8 bits
  assert worst(tensor_q) < 10  # the narrowest channels round to (almost) nothing
  raw = layer.conv.kernel[...]  # before folding, one scale fits every channel
  raw_worst = min(sqnr_db(raw[..., c], fake_quant_weight(raw, 8, False)[..., c]) for c in range(32))
  assert raw_worst > 25


def test_sqnr_and_spread():
  assert sqnr_db([1.0, 2.0], [1.0, 2.0]) == float('inf')
  assert sqnr_db([1.0, 0.0], [0.9, 0.0]) == pytest.approx(20.0)
  assert channel_range_spread(np.array([[1.0, -4.0], [0.5, 2.0]])) == 4.0


@pytest.mark.parametrize('bits', [3, 9, 8.0, True])
def test_bit_widths_out_of_range_are_refused(bits):
  with pytest.raises(ValueError, match=r'must be an integer in \[4, 8\]'):
    LayerQuant(weight_bits=bits)
  with pytest.raises(ValueError, match=r'must be an integer in \[4, 8\]'):
    LayerQuant(act_bits=bits)
