"""Quantizing a zoo model: rules, the float mode is the original, calibration, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.quant.calibrate import calibrate
from sepnets.quant.layers import (FLOAT, LayerQuant, Rule, forward, layer_table, quant_layers,
                                  quantize_model, set_mode)
from sepnets.quant.numerics import sqnr_db
from sepnets.registry import create_model


def small_model(name='mobilenet_v2'):
  return create_model(name, rngs=nnx.Rngs(0), num_classes=10, width=0.35, stem_stride=1)


def images(n=8, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 32, 32, 3)), jnp.float32)


def test_layer_table_names_every_conv_and_linear_with_its_kind():
  table = dict(layer_table(small_model()))
  assert table['stem'] == 'standard'
  assert table['stages.0.0.conv_dw'] == 'depthwise'
  assert table['stages.1.0.conv_pw'] == 'pointwise'
  assert table['classifier'] == 'linear'
  kinds = list(table.values())
  assert kinds.count('depthwise') == 17 and 'stages.0.0.conv_dw.conv' not in table
  se = dict(layer_table(create_model('mobilenet_v3_small', rngs=nnx.Rngs(0), num_classes=10,
                                       width=0.5)))
  assert se['stages.0.0.se.conv_reduce'] == 'pointwise' and se['pre_logits'] == 'linear'


def test_float_mode_is_the_original_model_and_wraps_the_same_variables():
  model = small_model()
  x = images()
  reference = forward(model, x)
  params = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  stats = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.BatchStat))[0]
  layers = quantize_model(model, [Rule('*')])
  assert len(layers) == len(layer_table(small_model()))
  np.testing.assert_array_equal(forward(model, x), reference)
  after = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  keys = lambda path: tuple(str(getattr(k, 'key', '')) for k in path)
  strip = lambda path: tuple(k for k in keys(path) if k not in ('linear', 'conv'))
  # a ConvNormAct's paths are unchanged; a bare conv or linear gains one level (.conv, .linear)
  assert sorted(strip(p) for p, _ in after) == sorted(strip(p) for p, _ in params)
  assert ('stages', '0', '0', 'conv_dw', 'bn', 'scale', '') in {keys(p) for p, _ in after}
  assert len(jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.BatchStat))[0]) \
      == len(stats)
  with pytest.raises(ValueError, match='already quantized'):
    quantize_model(model, [Rule('*')])


def test_calibrated_int8_model_tracks_the_float_model():
  model = small_model()
  x = images(16)
  reference = forward(model, x)
  quantize_model(model, [Rule('*')])
  ranges = {}
  for method in ('minmax', 'percentile', 'mse'):
    assert calibrate(model, [x[:8], x[8:]], method=method, percentile=99.9) == 2
    ranges[method] = [(float(layer.lo[...]), float(layer.hi[...])) for layer in quant_layers(model)]
    quantized = forward(model, x)
    assert 15 < sqnr_db(reference, quantized) < 60, method  # rounded, but close
  observed = [(float(layer.amin[...]), float(layer.amax[...])) for layer in quant_layers(model)]
  for (amin, amax), (lo, hi) in zip(observed, ranges['minmax']):
    assert (lo, hi) == (min(amin, 0.0), amax) or (lo, hi) == (amin, amax)
  for method in ('percentile', 'mse'):  # clipped ranges sit inside the observed ones
    for (amin, amax), (lo, hi) in zip(observed, ranges[method]):
      assert amin - 1e-6 <= lo and hi <= amax + 1e-6
    assert any(hi < amax - 1e-6 for (_, amax), (_, hi) in zip(observed, ranges[method]))
  set_mode(model, 'float')
  np.testing.assert_array_equal(forward(model, x), reference)


def test_rules_select_by_path_and_kind_and_the_last_match_wins():
  model = small_model()
  four_bit = LayerQuant(weight_bits=4, per_channel=False)
  quantize_model(model, [Rule('*', kind='depthwise'), Rule('stages.1.*', four_bit)])
  by_path = {layer.path: layer for layer in quant_layers(model)}
  assert by_path['stages.0.0.conv_dw'].quant == LayerQuant()
  assert by_path['stages.0.0.conv_pw'].quant == FLOAT
  assert by_path['stages.1.0.conv_dw'].quant == four_bit
  assert by_path['stages.1.0.conv_pw'].quant == four_bit
  assert by_path['classifier'].quant == FLOAT


def test_bad_rules_and_calibration_input_are_named():
  model = small_model()
  with pytest.raises(ValueError, match=r"rule 'stages\.9\.\*' matches no layer; layer paths "
                     r"look like: stem, stages\.0\.0\.conv_dw, stages\.0\.0\.conv_pw"):
    quantize_model(model, [Rule('stages.9.*')])
  assert quant_layers(model) == []  # the model is left as it was
  with pytest.raises(ValueError, match="unknown layer kind 'dw'"):
    Rule('*', kind='dw')
  model = small_model()
  quantize_model(model, [Rule('*')])
  with pytest.raises(ValueError, match='calibration needs at least one batch'):
    calibrate(model, [])
  with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
    calibrate(model, [images()], method='kl')
  with pytest.raises(ValueError, match="unknown quantization mode 'int8'"):
    set_mode(model, 'int8')
