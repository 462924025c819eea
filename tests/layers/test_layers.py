"""Layer semantics: shapes, paddings, init scale, activations and squeeze-excite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sepnets.layers import (ACTIVATIONS, ConvNormAct, DepthwiseConv, PointwiseConv,
                            SeparableConv, SqueezeExcite, StandardConv, get_act)
from tests.conftest import rel_err


@pytest.mark.parametrize('padding,size,stride,expected', [
    ('same', 8, 2, 4), ('same', 7, 2, 4), ('symmetric', 7, 2, 4), ('symmetric', 8, 2, 4),
    ('valid', 8, 2, 3), ('same', 9, 1, 9), ('symmetric', 9, 1, 9),
])
def test_output_size(padding, size, stride, expected):
  y = StandardConv(2, 3, 3, stride=stride, padding=padding, rngs=nnx.Rngs(0))(jnp.ones((1, size, size, 2)))
  assert y.shape == (1, expected, expected, 3)


def test_same_is_asymmetric_and_symmetric_is_not_on_stride_2(rng):
  """TF 'same' pads (0, 1) on an even input with stride 2; PyTorch-style pads (1, 1)."""
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 2)), jnp.float32)
  same = StandardConv(2, 2, 3, stride=2, padding='same', rngs=nnx.Rngs(0))
  sym = StandardConv(2, 2, 3, stride=2, padding='symmetric', rngs=nnx.Rngs(0))
  w = same.kernel[...]
  dn = ('NHWC', 'HWIO', 'NHWC')
  ref_same = lax.conv_general_dilated(x, w, (2, 2), ((0, 1), (0, 1)), dimension_numbers=dn)
  ref_sym = lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn)
  assert rel_err(same(x), ref_same) < 1e-6
  assert rel_err(sym(x), ref_sym) < 1e-6
  assert rel_err(same(x), sym(x)) > 1e-2


def test_depthwise_channel_multiplier_order(rng):
  """Output channel o reads input channel o // m."""
  layer = DepthwiseConv(3, 1, multiplier=2, strategy='grouped', rngs=nnx.Rngs(0))
  layer.kernel[...] = jnp.ones_like(layer.kernel[...])
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 3)), jnp.float32)
  y = layer(x)
  np.testing.assert_allclose(y, jnp.repeat(x, 2, axis=-1), rtol=1e-6)


@pytest.mark.parametrize('groups_kind,build,fan_out', [
    ('standard', lambda r: StandardConv(64, 128, 3, rngs=r), 9 * 128),
    ('depthwise', lambda r: DepthwiseConv(256, 3, rngs=r), 9),
    ('depthwise_m2', lambda r: DepthwiseConv(128, 3, multiplier=2, rngs=r), 18),
    ('pointwise', lambda r: PointwiseConv(256, 512, rngs=r), 512),
])
def test_init_std_uses_fan_out_over_groups(groups_kind, build, fan_out):
  kernel = np.asarray(build(nnx.Rngs(1)).kernel[...])
  assert abs(kernel.std() / np.sqrt(2.0 / fan_out) - 1) < 0.05


@pytest.mark.parametrize('shape', [(3, 3, 1, 144), (1, 1, 32, 96), (5, 5, 1, 7), (1, 1, 1, 1),
                                   (1, 1, 640, 3840)])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_kernel_init_draws_what_jax_random_normal_draws(shape, dtype):
  """The initializer's flat power-of-two draws give the numbers of a draw of `shape`, bit for
  bit, eagerly and traced, with typed and raw keys; another dtype takes jax.random itself."""
  from sepnets.layers.conv import scaled_normal
  for key in (jax.random.key(7), jax.random.PRNGKey(7), nnx.Rngs(3).params()):
    expected = np.asarray(jax.random.normal(key, shape, dtype) * 0.37)
    got = scaled_normal(key, shape, dtype, 0.37)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(np.asarray(got), expected)
    traced = jax.jit(lambda k: scaled_normal(k, shape, dtype, 0.37))(key)
    np.testing.assert_allclose(np.asarray(traced, np.float32), expected.astype(np.float32),
                               rtol=1e-6)


def test_kernel_init_compiles_one_sampler_per_power_of_two(caplog):
  """New kernel shapes of a count already drawn compile nothing: not a sampler, and not the
  move of the NumPy result to the device either (jnp.asarray compiles a `stage` per shape)."""
  from sepnets.layers.conv import _flat_normal, scaled_normal
  key = jax.random.key(0)
  scaled_normal(key, (3, 3, 1, 200), jnp.float32, 1.0)  # 1800 values: the 2048 sampler
  before = _flat_normal._cache_size()
  with caplog.at_level('WARNING'), jax.log_compiles():
    for channels in (121, 145, 185, 193, 217, 227):  # 1089 to 2043 values
      scaled_normal(key, (3, 3, 1, channels), jnp.float32, 1.0)
  assert _flat_normal._cache_size() == before
  assert not [r.getMessage() for r in caplog.records if 'Compiling' in r.getMessage()]


def test_activations():
  x = jnp.linspace(-8, 8, 33)
  np.testing.assert_allclose(get_act('relu6')(x), np.clip(x, 0, 6))
  np.testing.assert_allclose(get_act('hard_swish')(x), x * np.clip(x + 3, 0, 6) / 6, rtol=1e-6)
  np.testing.assert_allclose(get_act('hard_sigmoid')(x), np.clip(x + 3, 0, 6) / 6, rtol=1e-6)
  np.testing.assert_allclose(get_act('swish')(x), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
  assert get_act(None) is ACTIVATIONS['identity']


def test_squeeze_excite_gates_channels(rng):
  se = SqueezeExcite(4, 2, gate='hard_sigmoid', rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((2, 5, 5, 4)), jnp.float32)
  s = x.mean(axis=(1, 2), keepdims=True)
  s = jnp.maximum(s @ se.conv_reduce.kernel[0, 0] + se.conv_reduce.bias[...], 0)
  s = s @ se.conv_expand.kernel[0, 0] + se.conv_expand.bias[...]
  expected = x * (np.clip(s + 3, 0, 6) / 6)
  assert rel_err(se(x), expected) < 1e-5


def test_separable_is_depthwise_then_pointwise(rng):
  sep = SeparableConv(4, 6, 3, stride=2, mid_norm=True, mid_act='relu', rngs=nnx.Rngs(0))
  sep.eval()
  x = jnp.asarray(rng.standard_normal((1, 9, 9, 4)), jnp.float32)
  expected = sep.pw(jax.nn.relu(sep.norm(sep.dw(x))))
  assert rel_err(sep(x), expected) < 1e-6
  assert sep(x).shape == (1, 5, 5, 6)


def test_conv_norm_act_picks_the_conv_kind():
  r = nnx.Rngs(0)
  assert type(ConvNormAct(8, 8, 3, groups=8, rngs=r).conv) is DepthwiseConv
  assert type(ConvNormAct(8, 16, 3, groups=8, rngs=r).conv) is DepthwiseConv
  assert type(ConvNormAct(8, 16, 1, rngs=r).conv) is PointwiseConv
  assert type(ConvNormAct(8, 16, 3, rngs=r).conv) is StandardConv
  no_norm = ConvNormAct(8, 16, 3, norm=False, rngs=r)
  assert no_norm.bn is None and no_norm.conv.use_bias


def test_train_mode_updates_batch_stats_and_eval_does_not(rng):
  layer = ConvNormAct(4, 8, 3, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32) + 3
  before = np.asarray(layer.bn.mean[...]).copy()
  layer.eval()
  layer(x)
  np.testing.assert_array_equal(layer.bn.mean[...], before)
  layer.train()
  layer(x)
  assert not np.allclose(layer.bn.mean[...], before)


def test_bf16_compute_keeps_fp32_params(rng):
  layer = SeparableConv(8, 8, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  y = layer(jnp.asarray(rng.standard_normal((1, 8, 8, 8)), jnp.float32))
  assert y.dtype == jnp.bfloat16
  assert layer.dw.kernel[...].dtype == jnp.float32
