"""Universal inverted bottleneck (MobileNetV4): https://arxiv.org/abs/2404.10518

With a start depthwise kernel a and a mid depthwise kernel k it covers four blocks:
ExtraDW (a, k), inverted residual (0, k), ConvNeXt-like (a, 0) and FFN (0, 0).
"""

from __future__ import annotations

import jax
from flax import nnx

from sepnets.blocks.common import LayerOptions, add_residual, drop_path
from sepnets.builder import ResolvedBlock
from sepnets.layers import ConvNormAct
from sepnets.layers.norm_act import conv_norm_act_pair


class UniversalInvertedBottleneck(nnx.Module):
  """[dw start -> BN] -> 1x1 expand -> BN -> act [-> dw mid -> BN -> act] -> 1x1 project -> BN [+ x].

  The stride goes to the mid depthwise conv when there is one, else to the start one.
  """

  def __init__(self, block: ResolvedBlock, *, opts: LayerOptions, rngs: nnx.Rngs):
    spec, c, mid = block.spec, block.in_chs, block.mid_chs
    kw = opts.conv_kwargs()
    start_stride = 1 if spec.kernel else block.stride
    self.dw_start = (ConvNormAct(c, c, spec.start_kernel, stride=start_stride, groups=c,
                                 act=None, rngs=rngs, **kw) if spec.start_kernel else None)
    self.pw_exp = ConvNormAct(c, mid, 1, act=block.act, rngs=rngs, **kw)
    self.dw_mid = (ConvNormAct(mid, mid, spec.kernel, stride=block.stride, groups=mid,
                               act=block.act, rngs=rngs, **kw) if spec.kernel else None)
    self.pw_proj = ConvNormAct(mid, block.out_chs, 1, act=None, rngs=rngs, **kw)
    self.has_skip = block.has_skip
    self.drop_path = drop_path(block, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    if self.dw_start is not None:
      x = self.dw_start(x)
    if self.dw_mid is not None:
      x = conv_norm_act_pair(self.pw_exp, self.dw_mid, x)
    else:
      x = self.pw_exp(x)
    x = self.pw_proj(x)
    if self.has_skip:
      x = add_residual(x, shortcut, self.drop_path)
    return x
