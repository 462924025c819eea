"""Cross-layer equalization: which pairs, function preserved under ReLU, per-tensor repaired."""

import jax
import numpy as np
from flax import nnx

from sepnets.quant.equalize import equalize, find_pairs
from sepnets.quant.layers import FLOAT, LayerQuant, Rule, quant_layers, quantize_model
from sepnets.quant.calibrate import calibrate
from sepnets.quant.numerics import channel_range_spread, sqnr_db
from sepnets.registry import create_model
from tests.quant.test_model import forward, images
from tests.quant.test_sensitivity import FRAGILE, fragile_model


def test_pairs_follow_relu_outputs_and_never_cross_a_residual_or_squeeze_excite():
  v2 = create_model('mobilenet_v2', rngs=nnx.Rngs(0), num_classes=10, width=0.35)
  quantize_model(v2, [Rule('*', FLOAT)])
  pairs = [(a.path, b.path) for a, b in find_pairs(v2)]
  assert ('stem', 'stages.0.0.conv_dw') in pairs
  assert ('stages.1.0.conv_pw', 'stages.1.0.conv_dw') in pairs
  assert ('stages.1.0.conv_dw', 'stages.1.0.conv_pwl') in pairs
  assert not any(a.endswith('conv_pwl') for a, _ in pairs)  # linear bottlenecks feed residuals
  assert len(pairs) == 1 + 1 + 2 * 16  # stem, the first block (dw -> pw), 16 inverted residuals
  switched = equalize(v2, iterations=1)['relu6_to_relu']
  assert 'stem' in switched and 'stages.1.0.conv_pw' in switched
  v3 = create_model('mobilenet_v3_small', rngs=nnx.Rngs(0), num_classes=10, width=0.5)
  quantize_model(v3, [Rule('*', FLOAT)])
  v3_pairs = [(a.path, b.path) for a, b in find_pairs(v3)]
  assert ('stages.1.0.conv_pw', 'stages.1.0.conv_dw') in v3_pairs  # relu, no SE in between
  assert not any(b.endswith('conv_pwl') and a.endswith('conv_dw') and 'stages.0' in a
                 for a, b in v3_pairs)  # stage 0 has squeeze-excite between dw and pwl


def test_equalization_keeps_a_relu_network_and_repairs_per_tensor_scales():
  model = fragile_model()
  x = images()
  quantize_model(model, [Rule('*', LayerQuant(weight_bits=8, per_channel=False, act_bits=None))])
  layers = {layer.path: layer for layer in quant_layers(model)}
  for layer in layers.values():  # MobileNetV1 uses ReLU6: compare against its ReLU twin
    if getattr(layer, 'act_name', None) == 'relu6':
      layer.act_name, layer.act = 'relu', jax.nn.relu
  reference = forward(model, x)
  calibrate(model, [x])
  before = sqnr_db(reference, forward(model, x))
  spread_before = channel_range_spread(layers[FRAGILE].folded()[0])

  result = equalize(model)
  assert len(result['pairs']) == 26 and result['relu6_to_relu'] == []
  for layer in layers.values():
    layer.mode = 'float'
  np.testing.assert_allclose(forward(model, x), reference, rtol=1e-4, atol=1e-4)
  calibrate(model, [x])
  after = sqnr_db(reference, forward(model, x))
  assert channel_range_spread(layers[FRAGILE].folded()[0]) < spread_before / 10
  assert after > before + 10, (before, after)
