"""Convolution followed by BatchNorm and an activation (the workhorse of every block)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from sepnets import trace
from sepnets.layers.activations import get_act
from sepnets.layers.batch_stats import affine, batch_sums
from sepnets.layers.conv import DepthwiseConv, PointwiseConv, StandardConv, companion_impl
from sepnets.layers.depthwise import NATIVE_ACTS


REDUCTIONS = ('auto', 'xla')
"""`BatchNorm(reductions=)`: the native one-pass sums on CPU where they apply, or XLA's."""


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` whose training-mode normalization is one multiply-add per element.

  With batch statistics, `x * a + b` with per-channel `a = scale / sqrt(var + eps)` and
  `b = bias - mean * a` (PyTorch's CPU kernels fold it the same way) replaces
  `(x - mean) * a + bias`. The backward of the folded form needs only `sum(g)` and
  `sum(g * x)`, reductions of plain tensors, where the unfolded one also materializes
  `x - mean` for `sum(g * (x - mean))`. Values agree to rounding. Everything else — running
  averages, statistics (E[x^2] - E[x]^2 in float32, as `use_fast_variance`), parameters,
  evaluation mode, masks, named axes — is `nnx.BatchNorm`'s.

  `reductions='auto'` takes the training-mode sums (sum x and sum x^2; sum g and sum g * x in
  the backward) from the native one-pass kernel on CPU (`batch_stats`) for float32 inputs
  normalized over the last axis; 'xla' keeps XLA's reductions everywhere.
  """

  def __init__(self, *args, reductions: str = 'auto', **kwargs):
    if reductions not in REDUCTIONS:
      raise ValueError(f'unknown BatchNorm reductions {reductions!r}; expected one of '
                       f'{", ".join(REDUCTIONS)}')
    super().__init__(*args, **kwargs)
    self.reductions = reductions

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    running = self.use_running_average if use_running_average is None else use_running_average
    if (running is not False or mask is not None or self.axis_name is not None
        or self.scale is None or self.bias is None or not self.use_fast_variance):
      return super().__call__(x, use_running_average, mask=mask)
    axes = tuple(a % x.ndim for a in ((self.axis,) if isinstance(self.axis, int) else self.axis))
    out_dtype = self.dtype or jnp.result_type(x, self.scale[...], self.bias[...])
    stats = jnp.promote_types(out_dtype, jnp.float32)
    xs = x.astype(stats)
    native = self.reductions == 'auto' and x.dtype == jnp.float32  # no materialized cast
    mean, mean_sq = batch_sums(xs, axes, native)
    var = jnp.maximum(0.0, mean_sq - mean * mean)
    self.mean[...] = lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
    self.var[...] = lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
    a = self.scale[...].astype(stats) * lax.rsqrt(var + self.epsilon)
    b = self.bias[...].astype(stats) - mean * a
    return affine(xs, a, b, axes, native).astype(out_dtype)


def batch_norm_affine(bn: nnx.BatchNorm) -> tuple[jax.Array, jax.Array]:
  """Per-channel float32 (g, shift) with eval-mode `bn(x) == x * g + shift`: g = gamma /
  sqrt(var + eps), shift = beta - mean * g, from the running statistics (no gamma: 1, no
  beta: 0). What folding a BatchNorm into the conv before it uses."""
  mean = bn.mean[...].astype(jnp.float32)
  gamma = bn.scale[...].astype(jnp.float32) if bn.scale is not None else jnp.ones_like(mean)
  beta = bn.bias[...].astype(jnp.float32) if bn.bias is not None else jnp.zeros_like(mean)
  g = gamma * lax.rsqrt(bn.var[...].astype(jnp.float32) + bn.epsilon)
  return g, beta - mean * g


def batch_norm(channels: int, *, momentum: float = 0.9, eps: float = 1e-5, dtype=None,
               param_dtype=jnp.float32, reductions: str = 'auto', rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm over the channel axis with PyTorch's defaults (momentum 0.1 there = 0.9 here)."""
  return BatchNorm(channels, momentum=momentum, epsilon=eps, dtype=dtype,
                   param_dtype=param_dtype, reductions=reductions, rngs=rngs)


class ConvNormAct(nnx.Module):
  """conv -> BatchNorm -> activation.

  The conv is a DepthwiseConv when groups == in_chs, a PointwiseConv for a 1x1 kernel
  without groups, else a StandardConv.

  Args:
    act: activation name (`activations.ACTIVATIONS`) or None for none.
    norm: False drops the BatchNorm and gives the conv a bias instead.
    strategy: depthwise strategy; 'grouped' also keeps a pointwise or dense conv XLA's own
      (`conv.companion_impl`), and the BatchNorm's training-mode sums (`reductions='xla'`).
  """

  def __init__(self, in_chs: int, out_chs: int, kernel_size: int | tuple[int, int] = 3, *,
               stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1,
               groups: int = 1, padding: str = 'same', act: str | None = 'relu',
               norm: bool = True, bn_momentum: float = 0.9, bn_eps: float = 1e-5,
               strategy: str = 'auto', dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    common = dict(use_bias=not norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if groups == in_chs and groups > 1 and out_chs % in_chs == 0:
      self.conv = DepthwiseConv(in_chs, kernel_size, multiplier=out_chs // in_chs, stride=stride,
                                dilation=dilation, padding=padding, strategy=strategy, **common)
    elif kernel_size in (1, (1, 1)) and groups == 1 and dilation in (1, (1, 1)):
      self.conv = PointwiseConv(in_chs, out_chs, stride=stride,
                                impl=companion_impl(strategy), **common)
    else:
      self.conv = StandardConv(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation,
                               groups=groups, padding=padding,
                               impl=companion_impl(strategy), **common)
    self.bn = batch_norm(out_chs, momentum=bn_momentum, eps=bn_eps, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs,
                         reductions='xla' if strategy == 'grouped' else 'auto') if norm else None
    self.act_name = act
    self.act = get_act(act)

  def __call__(self, x: jax.Array) -> jax.Array:
    return conv_norm_act(self.conv, self.bn, self.act_name, x)


def fuses_eval_norm(conv: nnx.Module, bn: BatchNorm | None) -> bool:
  """Eval mode, a depthwise conv whose strategy may run natively: the BatchNorm and the
  activation go into the conv's kernel call (`DepthwiseConv(norm_act=...)`). Not while
  `sepnets.trace` records layer calls: the cost model counts the BatchNorm as its own layer."""
  return (isinstance(conv, DepthwiseConv) and conv.strategy in ('auto', 'native')
          and bn is not None and bn.use_running_average is True and not conv.use_bias
          and not trace.recording())


PAIR_ACTS = frozenset(NATIVE_ACTS) - {'swish'}
"""The activations of a first layer that `conv_norm_act_pair` moves into the depthwise call.
Not swish, though the kernel has it: timed in one process with and without the pair fused
(2 cores, AVX-512), efficientnet_b0's swish made inference slower at batch 1 and gained
little at batch 32, where mobilenet_v2's relu6 and mobilenet_v3_large's hard_swish gained at
batch 32 and broke even at batch 1 (the numbers are in the closing note of issue 7)."""


def fuses_eval_pair(first: nnx.Module, second: nnx.Module) -> bool:
  """Eval mode, two ConvNormActs in a row (not quantization wrappers), the second fusing its
  own BatchNorm (`fuses_eval_norm`), the first with a BatchNorm and an activation in
  `PAIR_ACTS`: the first's BatchNorm and activation go into the second's kernel call too,
  applied to its input as it is read (`conv_norm_act_pair`)."""
  return (type(first) is ConvNormAct and type(second) is ConvNormAct
          and fuses_eval_norm(second.conv, second.bn) and first.bn is not None
          and first.bn.use_running_average is True and not first.conv.use_bias
          and first.act_name in PAIR_ACTS)


def conv_norm_act_pair(first: nnx.Module, second: nnx.Module, x: jax.Array) -> jax.Array:
  """`second(first(x))`; where `fuses_eval_pair` holds (an expansion 1x1 conv, then a
  depthwise conv, in eval mode), the first's BatchNorm and activation run inside the second's
  native kernel as it reads its input, so the expanded tensor before them is the only one
  stored (not also the one after: a full write and read of the block's largest tensor)."""
  if not fuses_eval_pair(first, second):
    return second(first(x))
  return second.conv(first.conv(x), norm_act=(*batch_norm_affine(second.bn), second.act_name),
                     act_in=(*batch_norm_affine(first.bn), first.act_name))


def conv_norm_act(conv: nnx.Module, bn: BatchNorm | None, act: str | None,
                  x: jax.Array) -> jax.Array:
  """`act(bn(conv(x)))` (no `bn` when None), fused where `fuses_eval_norm` says so: what a
  ConvNormAct computes, and a quantization wrapper's float mode with it."""
  if fuses_eval_norm(conv, bn):
    return conv(x, norm_act=(*batch_norm_affine(bn), act))
  x = conv(x)
  if bn is not None:
    x = bn(x)
  return get_act(act)(x)
