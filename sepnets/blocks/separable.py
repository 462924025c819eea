"""Depthwise-separable block (MobileNetV1; the first block of MobileNetV2/V3 and EfficientNet).

Paper: https://arxiv.org/abs/1704.04861
"""

from __future__ import annotations

import jax
from flax import nnx

from sepnets.blocks.common import LayerOptions, add_residual, drop_path, squeeze_excite
from sepnets.builder import ResolvedBlock
from sepnets.layers import ConvNormAct


class DepthwiseSeparable(nnx.Module):
  """depthwise -> BN -> act [-> SE] -> pointwise -> BN [-> act] [+ shortcut]."""

  def __init__(self, block: ResolvedBlock, *, opts: LayerOptions, se_gate: str,
               se_act: str | None, rngs: nnx.Rngs):
    spec, c = block.spec, block.in_chs
    self.conv_dw = ConvNormAct(c, c, spec.kernel, stride=block.stride, groups=c, act=block.act,
                               rngs=rngs, **opts.conv_kwargs())
    self.se = squeeze_excite(block, c, opts=opts, gate=se_gate, act=se_act, rngs=rngs)
    self.conv_pw = ConvNormAct(c, block.out_chs, 1, act=block.act if spec.pw_act else None,
                               rngs=rngs, **opts.conv_kwargs())
    self.has_skip = block.has_skip
    self.drop_path = drop_path(block, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    x = self.conv_dw(x)
    if self.se is not None:
      x = self.se(x)
    x = self.conv_pw(x)
    if self.has_skip:
      x = add_residual(x, shortcut, self.drop_path)
    return x
