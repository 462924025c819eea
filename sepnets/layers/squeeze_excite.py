"""Squeeze-and-excitation: channel gating from globally pooled features.

Paper: https://arxiv.org/abs/1709.01507 (as used in MobileNetV3 and EfficientNet).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.layers.activations import get_act
from sepnets.layers.conv import PointwiseConv
from sepnets.layers.helpers import positive_int


class SqueezeExcite(nnx.Module):
  """x * gate(expand(act(reduce(mean_hw(x))))), both 1x1 convs with bias.

  Args:
    channels: input (and output) channels.
    reduced_chs: channels of the bottleneck; the model decides the rounding.
    act: activation after the reduction ('relu' in MobileNetV3, 'swish' in EfficientNet).
    gate: gating function ('sigmoid', or 'hard_sigmoid' in MobileNetV3).
  """

  def __init__(self, channels: int, reduced_chs: int, *, act: str = 'relu',
               gate: str = 'sigmoid', dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    positive_int('reduced_chs', reduced_chs)
    common = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv_reduce = PointwiseConv(channels, reduced_chs, **common)
    self.conv_expand = PointwiseConv(reduced_chs, channels, **common)
    self.act = get_act(act)
    self.gate = get_act(gate)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.conv_reduce(s)
    s = self.act(s)
    s = self.conv_expand(s)
    s = self.gate(s)
    return x * s.astype(x.dtype)
