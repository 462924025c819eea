"""The sensitivity analysis finds a fragile layer that was built to be fragile."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets.quant.layers import quant_layers
from sepnets.quant.sensitivity import analyze
from sepnets.registry import create_model

FRAGILE, FEEDER = 'stages.2.1.conv_dw', 'stages.2.0.conv_pw'


def get(model, path):
  node = model
  for key in path.split('.'):
    node = node[int(key)] if key.isdigit() else getattr(node, key)
  return node


def fragile_model():
  """A narrow MobileNetV1 where a quarter of the channels entering one depthwise layer are dead
  (the feeding ReLU never fires), so that layer's BatchNorm saw zero variance there: folding
  multiplies those channels' kernels by 1/sqrt(eps) ~ 316 while the live channels keep theirs —
  the range spread that wrecks per-tensor scales in trained MobileNets."""
  model = create_model('mobilenet_v1', rngs=nnx.Rngs(0), num_classes=10, width=0.25,
                       stem_stride=1)
  feeder, fragile = get(model, FEEDER), get(model, FRAGILE)
  channels = fragile.bn.var.shape[0]
  dead = np.arange(channels) % 4 == 0
  feeder.bn.bias[...] = jnp.where(dead, -100.0, feeder.bn.bias[...])  # ReLU output 0
  fragile.bn.var[...] = jnp.where(dead, 0.0, fragile.bn.var[...])  # what BN measured there
  return model


def test_sensitivity_ranks_the_constructed_fragile_layer_first():
  model = fragile_model()
  rng = np.random.default_rng(0)
  batches = [jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32) for _ in range(3)]
  float_logits = np.concatenate([np.asarray(model(b)) for b in batches[1:]])
  labels = np.argmax(float_logits, -1)  # the float model is right by definition
  result = analyze(model, batches[:1], batches[1:], labels, bits=(8,))
  rows = {row['layer']: row for row in result['layers']}
  assert len(rows) == len(quant_layers(model)) == 28 and result['float_accuracy'] == 1.0
  fragile = rows[FRAGILE]
  assert fragile['type'] == 'depthwise' and fragile['range_spread'] > 100
  assert max(r['range_spread'] for name, r in rows.items() if name != FRAGILE) < 50

  tensor = sorted(rows.values(), key=lambda r: r['settings']['w8 per-tensor']['sqnr_db'])
  assert tensor[0]['layer'] == FRAGILE  # breaks first, per tensor
  worst_other = tensor[1]['settings']['w8 per-tensor']['sqnr_db']
  assert fragile['settings']['w8 per-tensor']['sqnr_db'] < worst_other - 10
  # per channel, the same layer is fine: its SQNR rises by more than 20 dB
  assert fragile['settings']['w8 per-channel']['sqnr_db'] > \
      fragile['settings']['w8 per-tensor']['sqnr_db'] + 20
  first = result['summary']['first_to_break']['w8 per-tensor']
  assert first['worst_layers'][0] == FRAGILE and first['worst_types'][0] == 'depthwise'
  assert set(result['all_layers']) == {'w8 per-tensor', 'w8 per-channel'}
  assert result['all_layers']['w8 per-channel']['sqnr_db'] > \
      result['all_layers']['w8 per-tensor']['sqnr_db']
