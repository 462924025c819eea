"""Inverted residual (MBConv) and its fused variant (Fused-MBConv / EdgeResidual).

Papers: MobileNetV2 https://arxiv.org/abs/1801.04381, EfficientNet
https://arxiv.org/abs/1905.11946, EfficientNet-EdgeTPU / MobileNetV4 https://arxiv.org/abs/2404.10518
"""

from __future__ import annotations

import jax
from flax import nnx

from sepnets.blocks.common import LayerOptions, add_residual, drop_path, squeeze_excite
from sepnets.builder import ResolvedBlock
from sepnets.layers import ConvNormAct
from sepnets.layers.norm_act import conv_norm_act_pair


class InvertedResidual(nnx.Module):
  """[1x1 expand -> BN -> act] -> depthwise -> BN -> act [-> SE] -> 1x1 project -> BN [+ x].

  The expansion is omitted when the mid channels equal the input channels (as torchvision).
  """

  def __init__(self, block: ResolvedBlock, *, opts: LayerOptions, se_gate: str,
               se_act: str | None, rngs: nnx.Rngs):
    spec, mid = block.spec, block.mid_chs
    kw = opts.conv_kwargs()
    self.conv_pw = (ConvNormAct(block.in_chs, mid, 1, act=block.act, rngs=rngs, **kw)
                    if mid != block.in_chs else None)
    self.conv_dw = ConvNormAct(mid, mid, spec.kernel, stride=block.stride, groups=mid,
                               act=block.act, rngs=rngs, **kw)
    self.se = squeeze_excite(block, mid, opts=opts, gate=se_gate, act=se_act, rngs=rngs)
    self.conv_pwl = ConvNormAct(mid, block.out_chs, 1, act=None, rngs=rngs, **kw)
    self.has_skip = block.has_skip
    self.drop_path = drop_path(block, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    if self.conv_pw is not None:
      x = conv_norm_act_pair(self.conv_pw, self.conv_dw, x)
    else:
      x = self.conv_dw(x)
    if self.se is not None:
      x = self.se(x)
    x = self.conv_pwl(x)
    if self.has_skip:
      x = add_residual(x, shortcut, self.drop_path)
    return x


class EdgeResidual(nnx.Module):
  """KxK expand -> BN -> act [-> SE] -> 1x1 project -> BN [+ x] (no depthwise conv)."""

  def __init__(self, block: ResolvedBlock, *, opts: LayerOptions, se_gate: str,
               se_act: str | None, rngs: nnx.Rngs):
    spec, mid = block.spec, block.mid_chs
    kw = opts.conv_kwargs()
    self.conv_exp = ConvNormAct(block.in_chs, mid, spec.kernel, stride=block.stride,
                                act=block.act, rngs=rngs, **kw)
    self.se = squeeze_excite(block, mid, opts=opts, gate=se_gate, act=se_act, rngs=rngs)
    self.conv_pwl = ConvNormAct(mid, block.out_chs, 1, act=None, rngs=rngs, **kw)
    self.has_skip = block.has_skip
    self.drop_path = drop_path(block, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    x = self.conv_exp(x)
    if self.se is not None:
      x = self.se(x)
    x = self.conv_pwl(x)
    if self.has_skip:
      x = add_residual(x, shortcut, self.drop_path)
    return x
