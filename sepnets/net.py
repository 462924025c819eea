"""SeparableNet: stem, stages of blocks, head. Every zoo model is one of these."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.blocks import LayerOptions, make_block
from sepnets.builder import resolve
from sepnets.layers import ConvNormAct, batch_norm, get_act
from sepnets.layers.depthwise import get_strategy
from sepnets.layers.helpers import check_padding
from sepnets.specs import NetSpec

MIN_IMAGE_SIZE = 32
"""Every network downsamples 32x; smaller inputs are rejected rather than silently degenerate."""


def compute_dtype(dtype) -> jnp.dtype | None:
  """None (follow the input) or a floating dtype given as a name or a dtype."""
  if dtype is None:
    return None
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f'unknown dtype {dtype!r}; use float32, bfloat16 or float16') from None
  if not jnp.issubdtype(resolved, jnp.floating):
    raise ValueError(f'dtype must be a floating type, got {dtype!r}')
  return resolved


class SeparableNet(nnx.Module):
  """A CNN assembled from a NetSpec.

  Args:
    spec: the architecture (`sepnets.specs.NetSpec`).
    num_classes: classifier outputs; 0 drops the classifier (pooled features out).
    in_chans: input image channels.
    width, depth: channel and repeat multipliers (`sepnets.builder.resolve`).
    dropout: before the classifier (None: the spec's default).
    drop_path_rate: stochastic depth of the last block; earlier blocks scale linearly.
    stem_stride: 2 (the papers) or 1, the usual change for 32x32 images such as CIFAR-10
      (the network then downsamples 16x instead of 32x).
    padding: 'symmetric' (PyTorch; needed for imported weights) or 'same' (TF).
    strategy: depthwise implementation (`sepnets.layers.depthwise.STRATEGIES`).
    dtype: compute dtype (e.g. 'bfloat16'); parameters stay in param_dtype.
  """

  def __init__(self, spec: NetSpec, *, num_classes: int = 1000, in_chans: int = 3,
               width: float = 1.0, depth: float = 1.0, dropout: float | None = None,
               drop_path_rate: float = 0.0, stem_stride: int = 2, padding: str = 'symmetric',
               strategy: str = 'auto', dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
      raise ValueError(f'num_classes must be a non-negative integer, got {num_classes!r}')
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
      raise ValueError(f'in_chans must be a positive integer, got {in_chans!r}')
    dropout = spec.dropout if dropout is None else dropout
    if not 0 <= dropout < 1:
      raise ValueError(f'dropout must be in [0, 1), got {dropout!r}')
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
      raise ValueError(f'stem_stride must be 1 or 2, got {stem_stride!r}')
    check_padding(padding)
    get_strategy(strategy)
    net = resolve(spec, width=width, depth=depth, drop_path_rate=drop_path_rate)
    opts = LayerOptions(padding=padding, strategy=strategy, bn_eps=spec.bn_eps,
                        bn_momentum=spec.bn_momentum, dtype=compute_dtype(dtype),
                        param_dtype=param_dtype)
    self.in_chans = in_chans
    self.num_classes = num_classes
    self.num_features = net.num_features
    self.stem = ConvNormAct(in_chans, net.stem_chs, 3, stride=stem_stride, act=spec.stem_act or spec.act,
                            rngs=rngs, **opts.conv_kwargs())
    self.stages = nnx.List([
        nnx.List([make_block(b, opts=opts, se_gate=spec.se_gate, se_act=spec.se_act, rngs=rngs)
                  for b in stage]) for stage in net.stages])
    last_chs = net.stages[-1][-1].out_chs
    self.head = (ConvNormAct(last_chs, net.head_chs, 1, act=spec.act, rngs=rngs,
                             **opts.conv_kwargs()) if net.head_chs else None)
    pre_chs = net.pre_logits_chs
    self.pre_logits = (nnx.Linear(net.num_features, pre_chs, use_bias=not spec.pre_logits_norm,
                                  rngs=rngs, **opts.dtype_kwargs()) if pre_chs else None)
    self.pre_logits_norm = (batch_norm(pre_chs, momentum=spec.bn_momentum, eps=spec.bn_eps,
                                       rngs=rngs, **opts.dtype_kwargs())
                            if pre_chs and spec.pre_logits_norm else None)
    features = pre_chs or net.num_features
    self.head_act = get_act(spec.act)
    self.head_hidden_size = features
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.classifier = (nnx.Linear(features, num_classes, rngs=rngs, **opts.dtype_kwargs())
                       if num_classes else None)

  def check_input(self, x: jax.Array) -> None:
    """Raises a ValueError naming what is wrong with an input batch."""
    if x.ndim != 4:
      raise ValueError(f'expected an NHWC image batch of rank 4, got shape {tuple(x.shape)}')
    if x.shape[-1] != self.in_chans:
      raise ValueError(f'expected {self.in_chans} input channels (NHWC), got {x.shape[-1]} '
                       f'(input shape {tuple(x.shape)}); pass in_chans= to create_model')
    if min(x.shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(f'image {x.shape[1]}x{x.shape[2]} is too small for the network: '
                       f'it needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}')

  def forward_features(self, x: jax.Array) -> jax.Array:
    """Image batch (N, H, W, in_chans) -> final feature map (N, h, w, num_features)."""
    self.check_input(x)
    x = self.stem(x)
    for stage in self.stages:
      for block in stage:
        x = block(x)
    if self.head is not None:
      x = self.head(x)
    return x

  def forward_head(self, x: jax.Array, *, pre_logits: bool = False) -> jax.Array:
    """Feature map -> logits (or the pooled, pre-classifier features with pre_logits=True)."""
    x = jnp.mean(x, axis=(1, 2))
    if self.pre_logits is not None:
      x = self.pre_logits(x)
      if self.pre_logits_norm is not None:
        x = self.pre_logits_norm(x)
      x = self.head_act(x)
    if pre_logits or self.classifier is None:
      return x
    x = self.dropout(x)
    x = self.classifier(x)
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.forward_features(x)
    x = self.forward_head(x)
    return x
