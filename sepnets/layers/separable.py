"""Depthwise-separable convolution: depthwise K x K, then pointwise 1 x 1.

Paper: MobileNets, https://arxiv.org/abs/1704.04861. Weights K*K*C_in*m + C_in*m*C_out
against K*K*C_in*C_out for a standard conv (K=3, C=256: 67,840 vs 589,824, 8.69x fewer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.layers.activations import get_act
from sepnets.layers.conv import DepthwiseConv, PointwiseConv, companion_impl
from sepnets.layers.norm_act import batch_norm


class SeparableConv(nnx.Module):
  """depthwise -> [BatchNorm] -> [activation] -> pointwise.

  Args:
    multiplier: depthwise channel multiplier m; the pointwise conv sees C_in*m channels.
    mid_norm: BatchNorm between the two convs.
    mid_act: activation between the two convs (None for none).
    strategy: depthwise strategy (`depthwise.STRATEGIES`); 'grouped' also keeps the pointwise
      conv XLA's own (`conv.companion_impl`).
  """

  def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int] = 3, *,
               stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1,
               multiplier: int = 1, padding: str = 'same', strategy: str = 'auto',
               mid_norm: bool = False, mid_act: str | None = None, use_bias: bool = False,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dw = DepthwiseConv(in_chs, kernel_size, multiplier=multiplier, stride=stride,
                            dilation=dilation, padding=padding, strategy=strategy,
                            use_bias=use_bias, **common)
    self.norm = batch_norm(in_chs * multiplier, **common) if mid_norm else None
    self.act = get_act(mid_act)
    self.pw = PointwiseConv(in_chs * multiplier, out_chs, use_bias=use_bias,
                            impl=companion_impl(strategy), **common)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.dw(x)
    if self.norm is not None:
      x = self.norm(x)
    x = self.act(x)
    x = self.pw(x)
    return x
