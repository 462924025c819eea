"""Every dense-conv implementation equals XLA's convolution in value and both gradients."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from sepnets.layers import StandardConv
from sepnets.layers.dense import AUTO_MAX_IN_CHS, IMPLS, get_impl
from sepnets.layers.helpers import lax_padding
from tests.conftest import rel_err

DN = ('NHWC', 'HWIO', 'NHWC')
CASES = [  # (size, cin, cout, kernel, stride, padding, dilation)
    (9, 3, 8, 3, 2, 'same', 1), (8, 3, 8, 3, 2, 'same', 1), (8, 2, 5, 3, 1, 'symmetric', 1),
    (10, 3, 4, 5, 2, 'symmetric', 1), (11, 1, 4, 3, 1, 'same', 2), (7, 6, 4, 3, 1, 'valid', 1),
    (8, 3, 6, 2, 2, 'same', 1),
]


def _value_and_grads(impl, x, w, ct, stride, padding, dilation):
  pad = lax_padding(padding, w.shape[:2], (dilation, dilation))
  def loss(x, w):
    y = get_impl(impl)(x, w, (stride, stride), pad, rhs_dilation=(dilation, dilation),
                       dimension_numbers=DN)
    return jnp.sum(y * ct), y
  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
  return y, grads


@pytest.mark.parametrize('impl', [name for name in IMPLS if name != 'conv'])
@pytest.mark.parametrize('size,cin,cout,kernel,stride,padding,dilation', CASES)
def test_impl_matches_conv(impl, size, cin, cout, kernel, stride, padding, dilation, rng):
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)
  pad = lax_padding(padding, (kernel, kernel), (dilation, dilation))
  ref = lax.conv_general_dilated(x, w, (stride, stride), pad, rhs_dilation=(dilation,) * 2,
                                 dimension_numbers=DN)
  ct = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  ref_y, (ref_dx, ref_dw) = _value_and_grads('conv', x, w, ct, stride, padding, dilation)
  y, (dx, dw) = _value_and_grads(impl, x, w, ct, stride, padding, dilation)
  assert y.shape == ref_y.shape
  assert rel_err(y, ref_y) <= 1e-5
  assert rel_err(dx, ref_dx) <= 1e-5
  assert rel_err(dw, ref_dw) <= 1e-5
  # the comparison can fail: a kernel flipped in space is caught
  flipped, _ = _value_and_grads(impl, x, w[::-1, ::-1], ct, stride, padding, dilation)
  assert rel_err(flipped, ref_y) > 1e-2


def test_grouped_conv_falls_back_to_the_reference(rng):
  x = jnp.asarray(rng.standard_normal((1, 6, 6, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 2, 6)), jnp.float32)
  kw = dict(dimension_numbers=DN, feature_group_count=2)
  ref = lax.conv_general_dilated(x, w, (1, 1), 'SAME', **kw)
  assert rel_err(get_impl('im2col')(x, w, (1, 1), 'SAME', **kw), ref) <= 1e-6


@pytest.mark.parametrize('cin,expect_conv', [(3, False), (AUTO_MAX_IN_CHS + 1, True)])
def test_auto_uses_im2col_on_cpu_for_few_input_channels(cin, expect_conv):
  x = jax.ShapeDtypeStruct((2, 16, 16, cin), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, cin, 8), jnp.float32)
  fn = lambda x, w: get_impl('auto')(x, w, (2, 2), 'SAME', dimension_numbers=DN)
  hlo = jax.jit(fn).lower(x, w).compile().as_text()
  assert ('convolution' in hlo) == expect_conv


def test_layer_impl_and_errors(rng):
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 3)), jnp.float32)
  layers = {name: StandardConv(3, 8, 3, stride=2, impl=name, rngs=nnx.Rngs(0)) for name in IMPLS}
  for name, layer in layers.items():
    assert rel_err(layer(x), layers['conv'](x)) <= 1e-5, name
  with pytest.raises(ValueError, match=r"unknown dense conv implementation 'fft'.*'im2col'"):
    StandardConv(3, 8, 3, impl='fft', rngs=nnx.Rngs(0))
