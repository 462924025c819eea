"""The registry API and its errors."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sepnets
from sepnets.specs import BlockSpec, ds, ir, uib

EXPECTED = ['mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small',
            'mobilenet_v4_conv_small', 'mobilenet_v4_conv_medium', 'mobilenet_v4_conv_large',
            *[f'efficientnet_b{i}' for i in range(8)]]


def test_list_models():
  assert sepnets.list_models() == EXPECTED
  assert sepnets.list_models('mobilenet_v3*') == ['mobilenet_v3_large', 'mobilenet_v3_small']
  assert sepnets.list_models('nothing*') == []


def test_create_model_returns_eval_mode():
  model = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0))
  assert model.stem.bn.use_running_average is True
  assert model.dropout.deterministic is True


def test_unknown_model_suggests_close_matches():
  with pytest.raises(ValueError, match="unknown model 'mobilenetv2'; did you mean 'mobilenet_v2'"):
    sepnets.create_model('mobilenetv2', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown model 'resnet50'"):
    sepnets.get_model_def('resnet50')


def test_unknown_override_lists_valid_options():
  with pytest.raises(ValueError, match=r"unknown option\(s\) 'widht' for model 'mobilenet_v2'; "
                                       r"valid options: .*num_classes.*width"):
    sepnets.create_model('mobilenet_v2', rngs=nnx.Rngs(0), widht=0.5)
  with pytest.raises(ValueError, match="unknown option.*'width'.*'efficientnet_b0'"):
    sepnets.create_model('efficientnet_b0', rngs=nnx.Rngs(0), width=0.5)


@pytest.mark.parametrize('overrides,match', [
    ({'width': 0}, 'width multiplier must be a number in'),
    ({'width': -1.0}, 'width multiplier'),
    ({'width': 'big'}, 'width multiplier'),
    ({'num_classes': -3}, 'num_classes must be'),
    ({'in_chans': 0}, 'in_chans must be'),
    ({'dropout': 1.5}, 'dropout must be in'),
    ({'drop_path_rate': 1.0}, 'drop_path_rate must be in'),
    ({'padding': 'reflect'}, "unknown padding 'reflect'"),
    ({'strategy': 'fast'}, "unknown depthwise strategy 'fast'"),
    ({'dtype': 'int8'}, 'dtype must be a floating type'),
    ({'dtype': 'bfloat17'}, "unknown dtype 'bfloat17'"),
    ({'full_conv': 'yes'}, 'full_conv must be True or False'),
])
def test_bad_options(overrides, match):
  name = 'mobilenet_v1'
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: sepnets.create_model(name, rngs=nnx.Rngs(0), **overrides))


@pytest.mark.parametrize('shape,match', [
    ((1, 16, 16, 3), 'image 16x16 is too small for the network: it needs at least 32x32'),
    ((1, 64, 64, 1), 'expected 3 input channels \\(NHWC\\), got 1'),
    ((1, 3, 64, 64), 'expected 3 input channels \\(NHWC\\), got 64'),
    ((64, 64, 3), 'expected an NHWC image batch of rank 4'),
])
def test_bad_input(shape, match):
  model = sepnets.create_model('mobilenet_v3_small', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=match):
    model(jnp.zeros(shape))


def test_options_change_the_model():
  model = sepnets.create_model('mobilenet_v2', rngs=nnx.Rngs(0), num_classes=7, in_chans=1,
                               dtype='bfloat16', padding='same', strategy='grouped')
  y = nnx.jit(lambda m, x: m(x))(model, jnp.ones((1, 32, 32, 1)))
  assert y.shape == (1, 7) and y.dtype == jnp.bfloat16
  assert model.stem.conv.kernel[...].dtype == jnp.float32
  assert model.stages[1][0].conv_dw.conv.strategy == 'grouped'
  assert model.stages[1][0].conv_dw.conv.padding_mode == 'same'
  features = sepnets.create_model('efficientnet_b0', rngs=nnx.Rngs(0), num_classes=0)
  assert nnx.eval_shape(lambda m, x: m(x), features, jnp.ones((1, 32, 32, 3))).shape == (1, 1280)


def test_forward_features_and_head(rng):
  model = sepnets.create_model('mobilenet_v4_conv_small', rngs=nnx.Rngs(0), num_classes=5)
  x = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
  parts = nnx.jit(lambda m, x: (m.forward_features(x), m(x)))
  features, logits = parts(model, x)
  assert features.shape == (2, 2, 2, 960)
  pre = nnx.jit(lambda m, f: (m.forward_head(f, pre_logits=True), m.forward_head(f)))
  pooled, head_logits = pre(model, features)
  assert pooled.shape == (2, 1280)
  np.testing.assert_allclose(head_logits, logits, rtol=1e-5, atol=1e-6)


def test_drop_path_grows_linearly_and_only_on_residuals():
  model = sepnets.create_model('efficientnet_b0', rngs=nnx.Rngs(0))
  rates = [b.drop_path.rate for stage in model.stages for b in stage if b.drop_path is not None]
  assert rates == sorted(rates) and 0 < rates[0] < rates[-1] < 0.2
  assert all(b.drop_path is None for stage in model.stages for b in stage if not b.has_skip)


@pytest.mark.parametrize('build,match', [
    (lambda: ir(k=3, s=3, e=6, c=24), 'stride must be 1 or 2'),
    (lambda: ir(k=3, s=1, e=0.5, c=24), 'expand must be >= 1'),
    (lambda: ds(k=3, s=1, c=0), 'out_chs must be a positive integer'),
    (lambda: ds(k=3, s=1, c=16, act='relu7'), "unknown activation 'relu7'"),
    (lambda: uib(a=0, k=0, s=2, e=2, c=16), 'strided block needs'),
    (lambda: BlockSpec('xx', 1, 3, 1, 8), "unknown block kind 'xx'"),
])
def test_spec_constructors_validate(build, match):
  with pytest.raises(ValueError, match=match):
    build()
