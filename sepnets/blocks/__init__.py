"""Blocks: a ResolvedBlock (see sepnets.builder) in, an NNX module out."""

from __future__ import annotations

from flax import nnx

from sepnets.blocks.common import LayerOptions
from sepnets.blocks.inverted_residual import EdgeResidual, InvertedResidual
from sepnets.blocks.separable import DepthwiseSeparable
from sepnets.blocks.uib import UniversalInvertedBottleneck
from sepnets.builder import ResolvedBlock
from sepnets.layers import ConvNormAct


def make_block(block: ResolvedBlock, *, opts: LayerOptions, se_gate: str, se_act: str | None,
               rngs: nnx.Rngs) -> nnx.Module:
  """The module for one resolved block, by its spec's kind."""
  kind = block.spec.kind
  if kind == 'cn':
    return ConvNormAct(block.in_chs, block.out_chs, block.spec.kernel, stride=block.stride,
                       act=block.act, rngs=rngs, **opts.conv_kwargs())
  if kind == 'uib':
    return UniversalInvertedBottleneck(block, opts=opts, rngs=rngs)
  cls = {'ds': DepthwiseSeparable, 'ir': InvertedResidual, 'er': EdgeResidual}[kind]
  return cls(block, opts=opts, se_gate=se_gate, se_act=se_act, rngs=rngs)


__all__ = ['DepthwiseSeparable', 'EdgeResidual', 'InvertedResidual', 'LayerOptions',
           'UniversalInvertedBottleneck', 'make_block']
