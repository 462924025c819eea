"""Every pointwise implementation equals XLA's 1x1 convolution in value and both gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sepnets.layers import PointwiseConv
from sepnets.layers.pointwise import IMPLS, get_impl
from tests.conftest import rel_err

OTHERS = [name for name in IMPLS if name != 'conv']
DN = ('NHWC', 'HWIO', 'NHWC')


def _value_and_grads(impl, x, w, ct, stride):
  def loss(x, w):
    y = get_impl(impl)(x, w, (stride, stride), 'VALID', dimension_numbers=DN)
    return jnp.sum(y * ct), y
  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
  return y, grads


@pytest.mark.parametrize('impl', OTHERS)
@pytest.mark.parametrize('size,stride,cin,cout', [(7, 1, 6, 10), (8, 2, 5, 3), (9, 2, 16, 8)])
def test_impl_matches_conv(impl, size, stride, cin, cout, rng):
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((1, 1, cin, cout)), jnp.float32)
  ref_y = lax.conv_general_dilated(x, w, (stride, stride), 'VALID', dimension_numbers=DN)
  ct = jnp.asarray(rng.standard_normal(ref_y.shape), jnp.float32)
  ref_y, (ref_dx, ref_dw) = _value_and_grads('conv', x, w, ct, stride)
  y, (dx, dw) = _value_and_grads(impl, x, w, ct, stride)
  assert y.shape == ref_y.shape
  assert rel_err(y, ref_y) <= 1e-5
  assert rel_err(dx, ref_dx) <= 1e-5
  assert rel_err(dw, ref_dw) <= 1e-5
  # the comparison can fail: the kernel's transpose mixes channels differently
  if cin == cout:
    assert rel_err(get_impl(impl)(x, jnp.swapaxes(w, 2, 3), (stride,) * 2, 'VALID',
                                  dimension_numbers=DN), ref_y) > 1e-2


def test_dot_keeps_dtype_and_preferred_element_type(rng):
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((1, 1, 8, 4)), jnp.bfloat16)
  assert get_impl('dot')(x, w, (1, 1), 'VALID', dimension_numbers=DN).dtype == jnp.bfloat16
  y = get_impl('dot')(x, w, (1, 1), 'VALID', dimension_numbers=DN,
                      preferred_element_type=jnp.float32)
  ref = lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=DN,
                                 preferred_element_type=jnp.float32)
  assert y.dtype == jnp.float32 and rel_err(y, ref) <= 1e-2


@pytest.mark.parametrize('case', ['3x3', 'grouped', 'padded', 'nchw'])
def test_other_convs_fall_back_to_the_reference(case, rng):
  """`dot` is a drop-in for conv_general_dilated: what it does not implement, it delegates."""
  cin, kernel, groups, padding, dn = 4, 1, 1, 'VALID', DN
  if case == '3x3':
    kernel = 3
  elif case == 'grouped':
    groups = 2
  elif case == 'padded':
    padding = ((1, 1), (0, 0))
  shape = (1, 6, 6, cin)
  if case == 'nchw':
    dn, shape = ('NCHW', 'OIHW', 'NCHW'), (1, cin, 6, 6)
    w = jnp.asarray(rng.standard_normal((5, cin, 1, 1)), jnp.float32)
  else:
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin // groups, 6)), jnp.float32)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kw = dict(dimension_numbers=dn, feature_group_count=groups)
  ref = lax.conv_general_dilated(x, w, (1, 1), padding, **kw)
  assert rel_err(get_impl('dot')(x, w, (1, 1), padding, **kw), ref) <= 1e-6


def test_auto_lowers_to_a_dot_on_cpu():
  x = jax.ShapeDtypeStruct((2, 8, 8, 16), jnp.float32)
  w = jax.ShapeDtypeStruct((1, 1, 16, 24), jnp.float32)
  def hlo(impl):
    fn = lambda x, w: get_impl(impl)(x, w, (1, 1), 'VALID', dimension_numbers=DN)
    return jax.jit(fn).lower(x, w).compile().as_text()
  assert 'convolution' not in hlo('auto')
  assert 'convolution' in hlo('conv')


def test_layer_parameters_independent_of_impl():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 8)), jnp.float32)
  layers = {name: PointwiseConv(8, 12, impl=name, use_bias=True, rngs=nnx.Rngs(0))
            for name in IMPLS}
  for name, layer in layers.items():
    assert jax.tree.structure(nnx.state(layer, nnx.Param)) == \
        jax.tree.structure(nnx.state(layers['conv'], nnx.Param))
    assert rel_err(layer(x), layers['conv'](x)) <= 1e-5, name


def test_unknown_impl_is_named():
  with pytest.raises(ValueError, match=r"unknown pointwise implementation 'matmul'.*'dot'"):
    PointwiseConv(4, 4, impl='matmul', rngs=nnx.Rngs(0))
