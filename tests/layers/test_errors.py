"""Bad input fails with a ValueError that names the problem, at build or call time."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sepnets.layers import (ConvNormAct, DepthwiseConv, PointwiseConv, SeparableConv,
                            SqueezeExcite, StandardConv, get_act)

R = nnx.Rngs(0)


@pytest.mark.parametrize('build,match', [
    (lambda: StandardConv(6, 8, 3, groups=4, rngs=R), 'divisible by groups'),
    (lambda: StandardConv(0, 8, 3, rngs=R), 'in_chs must be a positive integer'),
    (lambda: StandardConv(8, -1, 3, rngs=R), 'out_chs must be a positive integer'),
    (lambda: StandardConv(8, 8, 0, rngs=R), 'kernel_size must be'),
    (lambda: StandardConv(8, 8, (3, 0), rngs=R), 'kernel_size must be'),
    (lambda: StandardConv(8, 8, 3, stride=0, rngs=R), 'stride must be'),
    (lambda: StandardConv(8, 8, 3, dilation=0, rngs=R), 'dilation must be'),
    (lambda: StandardConv(8, 8, 3, padding='SAME', rngs=R), "unknown padding 'SAME'"),
    (lambda: DepthwiseConv(8, 3, padding='reflect', rngs=R), "unknown padding 'reflect'"),
    (lambda: DepthwiseConv(0, 3, rngs=R), 'channels must be a positive integer'),
    (lambda: DepthwiseConv(8, 3, multiplier=0, rngs=R), 'multiplier must be'),
    (lambda: DepthwiseConv(8, 3, strategy='fast', rngs=R), "unknown depthwise strategy 'fast'"),
    (lambda: DepthwiseConv(8, 3, stride=0, rngs=R), 'stride must be'),
    (lambda: PointwiseConv(8, 0, rngs=R), 'out_chs must be'),
    (lambda: SeparableConv(8, 8, 3, strategy='nope', rngs=R), 'unknown depthwise strategy'),
    (lambda: SeparableConv(8, 8, 3, mid_act='tanhh', rngs=R), "unknown activation 'tanhh'"),
    (lambda: ConvNormAct(8, 8, 3, act='mish', rngs=R), "unknown activation 'mish'"),
    (lambda: SqueezeExcite(8, 0, rngs=R), 'reduced_chs must be'),
    (lambda: get_act('Relu'), "unknown activation 'Relu'"),
])
def test_bad_construction(build, match):
  with pytest.raises(ValueError, match=match):
    build()


@pytest.mark.parametrize('layer', [
    StandardConv(4, 8, 3, rngs=R), DepthwiseConv(4, 3, rngs=R), PointwiseConv(4, 8, rngs=R),
    SeparableConv(4, 8, 3, rngs=R), ConvNormAct(4, 8, 3, rngs=R),
])
def test_bad_input_at_call_time(layer):
  with pytest.raises(ValueError, match='expects an NHWC input of rank 4, got shape \\(8, 8, 4\\)'):
    layer(jnp.ones((8, 8, 4)))
  with pytest.raises(ValueError, match='expects 4 input channels, got 3'):
    layer(jnp.ones((1, 8, 8, 3)))


def test_bad_input_is_reported_under_jit_too():
  layer = DepthwiseConv(4, 3, rngs=R)
  graphdef, state = nnx.split(layer)
  with pytest.raises(ValueError, match='expects 4 input channels, got 5'):
    jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.ones((1, 8, 8, 5)))


def test_image_too_small():
  layer = StandardConv(4, 4, 5, padding='valid', rngs=R)
  with pytest.raises(ValueError, match='input 3x3 is too small for a \\(5, 5\\) kernel'):
    layer(jnp.ones((1, 3, 3, 4)))


def test_int_kernel_builds_2d_kernel():
  """An int kernel_size must not silently build a 1-D conv."""
  assert StandardConv(4, 8, 3, rngs=R).kernel.shape == (3, 3, 4, 8)
  assert DepthwiseConv(4, 5, multiplier=2, rngs=R).kernel.shape == (5, 5, 1, 8)
