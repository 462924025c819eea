"""Standard, depthwise and pointwise convolutions: the one place `nnx.Conv` is built.

All layers are NHWC, take `(k, k)` kernels (an int is expanded, never passed through as a
1-D kernel), use explicit padding modes (see `helpers.PADDINGS`) and check their input at
call time, so a wrong rank or channel count fails with a message instead of deep in XLA.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets.layers import dense, pointwise
from sepnets.layers.depthwise import affine_act, conv_affine_act, get_strategy
from sepnets.layers.helpers import (check_padding, conv_out_size, lax_padding, pair,
                                    positive_int, resolve_pads)


@functools.partial(jax.jit, static_argnums=1)
def _flat_normal(key: jax.Array, size: int) -> jax.Array:
  return jax.random.normal(key, (size,), jnp.float32)


def scaled_normal(key: jax.Array, shape: tuple[int, ...], dtype, std: float) -> jax.Array:
  """`jax.random.normal(key, shape, dtype) * std`, the same numbers, without compiling a
  sampler per shape where it can: eagerly, in float32 with the default (partitionable)
  threefry, it draws a flat power-of-two count (at least 1024) with one compiled sampler per
  count, and takes the first values (element i of a partitionable threefry draw depends on i
  alone, so they are the ones a draw of `shape` gives), scaled in NumPy (one float32 rounding,
  as XLA's), and put on the device with `jax.device_put` (`jnp.asarray` of a NumPy array
  compiles a copy per shape in jax 0.10). Each eager op compiles once per shape, about 0.2 s on
  XLA:CPU: efficientnet_b3, with 106 kernel shapes, took 27 s to create one at a time.
  Otherwise (traced, another dtype or generator) it is that expression."""
  n = math.prod(shape)
  if (isinstance(key, jax.core.Tracer) or jnp.dtype(dtype) != jnp.float32 or n == 0
      or not jax.config.jax_threefry_partitionable
      or str(jax.random.key_impl(key)) != 'threefry2x32'):
    return jax.random.normal(key, shape, dtype) * std
  size = max(1024, 1 << (n - 1).bit_length())
  values = np.asarray(_flat_normal(key, size))[:n].reshape(shape)
  return jax.device_put(values * np.float32(std))


def conv_kernel_init(groups: int = 1) -> nnx.Initializer:
  """He-normal over fan-out divided by groups, for HWIO kernels (timm's 'goog' init).

  The true fan-out of an input element of a grouped conv is K*K*C_out/groups. JAX's
  variance_scaling takes K*K*C_out, so a (3, 3, 1, 256) depthwise kernel's std would be
  16x too small; dividing by groups gives std = sqrt(2 / (K*K*m)).
  """

  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    *window, _, out_chs = shape
    fan_out = math.prod(window) * out_chs // groups
    return scaled_normal(key, shape, dtype, math.sqrt(2.0 / fan_out))

  return init


def companion_impl(strategy: str) -> str:
  """The pointwise and dense implementation that goes with a model's depthwise strategy:
  'grouped', XLA's reference, keeps every conv an XLA convolution (what the compiler-level
  analyses count against the analytic MACs); any other strategy takes 'auto'."""
  return 'conv' if strategy == 'grouped' else 'auto'


class _Conv2d(nnx.Conv):
  """nnx.Conv with validated arguments, padding modes and call-time input checks."""

  def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], *,
               stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1,
               groups: int = 1, padding: str = 'same', use_bias: bool = False,
               conv_fn=None, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int('in_chs', in_chs)
    positive_int('out_chs', out_chs)
    positive_int('groups', groups)
    kernel = pair('kernel_size', kernel_size)
    strides = pair('stride', stride)
    dilations = pair('dilation', dilation)
    check_padding(padding)
    if in_chs % groups or out_chs % groups:
      raise ValueError(f'in_chs ({in_chs}) and out_chs ({out_chs}) must both be divisible by '
                       f'groups ({groups})')
    extra = {} if conv_fn is None else {'conv_general_dilated': conv_fn}
    super().__init__(in_chs, out_chs, kernel, strides, padding=lax_padding(padding, kernel, dilations),
                     kernel_dilation=dilations, feature_group_count=groups, use_bias=use_bias,
                     dtype=dtype, param_dtype=param_dtype, kernel_init=conv_kernel_init(groups),
                     rngs=rngs, **extra)
    self.padding_mode = padding

  def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """NHWC output shape for an NHWC input shape; raises ValueError on a bad input."""
    if len(input_shape) != 4:
      raise ValueError(f'{type(self).__name__} expects an NHWC input of rank 4, '
                       f'got shape {tuple(input_shape)}')
    n, h, w, c = input_shape
    if c != self.in_features:
      raise ValueError(f'{type(self).__name__} expects {self.in_features} input channels, '
                       f'got {c} (input shape {tuple(input_shape)})')
    pads = resolve_pads(self.padding, (h, w), self.kernel_size, self.strides, self.kernel_dilation)
    out_hw = tuple(conv_out_size(size, k, s, d, p) for size, k, s, d, p in
                   zip((h, w), self.kernel_size, self.strides, self.kernel_dilation, pads))
    if min(out_hw) < 1:
      raise ValueError(f'input {h}x{w} is too small for a {self.kernel_size} kernel with stride '
                       f'{self.strides}, dilation {self.kernel_dilation} and {self.padding_mode!r} padding')
    return (n, *out_hw, self.out_features)

  def __call__(self, x: jax.Array) -> jax.Array:
    self.output_shape(x.shape)
    return super().__call__(x)

  def conv_with(self, x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """This layer's convolution (strides, padding, dilation, groups, depthwise strategy, dtype)
    with another kernel and bias of the same shapes: e.g. BatchNorm-folded, fake-quantized."""
    self.output_shape(x.shape)
    if kernel.shape != self.kernel.shape:
      raise ValueError(f'kernel shape {kernel.shape} != the layer\'s {self.kernel.shape}')
    x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
    y = self.conv_general_dilated(x, kernel, self.strides, self.padding,
                                  rhs_dilation=self.kernel_dilation,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=self.feature_group_count,
                                  precision=self.precision)
    return y if bias is None else y + bias


class StandardConv(_Conv2d):
  """A dense (or grouped) K x K convolution: K*K*C_in/groups*C_out weights.

  Args:
    impl: implementation (`dense.IMPLS`): 'auto' runs image stems (few input channels) on
      CPU as one dot over the concatenated windows; the parameter tree does not depend on it.
  """

  def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int] = 3, *,
               stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1,
               groups: int = 1, padding: str = 'same', use_bias: bool = False,
               impl: str = 'auto', dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation,
                     groups=groups, padding=padding, use_bias=use_bias,
                     conv_fn=dense.get_impl(impl), dtype=dtype, param_dtype=param_dtype,
                     rngs=rngs)
    self.impl = impl


class DepthwiseConv(_Conv2d):
  """One K x K filter per input channel (times a channel multiplier): K*K*C*m weights.

  Paper: MobileNets, https://arxiv.org/abs/1704.04861. Output channel o reads input channel
  o // multiplier (XLA's feature-group order).

  Args:
    channels: input channels C (= feature_group_count).
    kernel_size: K, or (KH, KW).
    multiplier: channel multiplier m >= 1; the layer outputs C*m channels.
    strategy: implementation of the grouped conv (`depthwise.STRATEGIES`); the parameter
      tree does not depend on it.
  """

  def __init__(self, channels: int, kernel_size: int | tuple[int, int] = 3, *,
               multiplier: int = 1, stride: int | tuple[int, int] = 1,
               dilation: int | tuple[int, int] = 1, padding: str = 'same',
               use_bias: bool = False, strategy: str = 'auto', dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int('channels', channels)
    positive_int('multiplier', multiplier)
    super().__init__(channels, channels * multiplier, kernel_size, stride=stride,
                     dilation=dilation, groups=channels, padding=padding, use_bias=use_bias,
                     conv_fn=get_strategy(strategy), dtype=dtype, param_dtype=param_dtype,
                     rngs=rngs)
    self.multiplier = multiplier
    self.strategy = strategy

  def __call__(self, x: jax.Array, *, norm_act: tuple[jax.Array, jax.Array, str | None] | None
               = None, act_in: tuple[jax.Array, jax.Array, str | None] | None = None
               ) -> jax.Array:
    """The convolution; with `norm_act=(scale, bias, act)`, `act(conv(x) * scale + bias)`
    (an eval-mode BatchNorm and activation, one native kernel call on CPU:
    `depthwise.conv_affine_act`), and with `act_in=(scale, bias, act)` as well, of
    `act(x * scale + bias)` instead of `x` (the layer before's, applied in the same call)."""
    if norm_act is None or self.use_bias:
      if act_in is not None:
        x = affine_act(x, *act_in)
      return super().__call__(x)
    self.output_shape(x.shape)
    scale, bias, act = norm_act
    pre = act_in[:2] if act_in is not None else ()
    x, kernel, scale, bias, *pre = self.promote_dtype((x, self.kernel[...], scale, bias, *pre),
                                                      dtype=self.dtype)
    return conv_affine_act(self.strategy, x, kernel, scale, bias, act, self.strides,
                           self.padding, self.kernel_dilation,
                           act_in=(*pre, act_in[2]) if act_in is not None else None)


class PointwiseConv(_Conv2d):
  """A 1 x 1 convolution mixing channels: C_in*C_out weights.

  Args:
    impl: implementation (`pointwise.IMPLS`): 'auto' contracts channels with a dot on CPU,
      where XLA's 1x1 convolution is slow; the parameter tree does not depend on it.
  """

  def __init__(self, in_chs: int, out_chs: int, *, stride: int | tuple[int, int] = 1,
               use_bias: bool = False, impl: str = 'auto', dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(in_chs, out_chs, 1, stride=stride, padding='valid', use_bias=use_bias,
                     conv_fn=pointwise.get_impl(impl), dtype=dtype, param_dtype=param_dtype,
                     rngs=rngs)
    self.impl = impl
