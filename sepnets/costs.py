"""Analytic costs: parameters, MACs and activation bytes per layer, and per-layer tables.

Two MAC counts are kept for every convolution:
- `macs`: every kernel tap at every output position, padding included (as papers count);
- `macs_valid`: only taps that land inside the input (as XLA's cost analysis counts: its
  conv flops are exactly 2 x macs_valid). For a 3x3 depthwise SAME conv on 8x56x56x256,
  that is 56,434,688 valid MACs (112,869,376 flops) against 57,802,752 padded MACs.

`layer_costs(module, input_shape)` traces any NNX module abstractly (no weights allocated,
no FLOPs run) and returns one `LayerCost` for every nnx.Conv, nnx.Linear and nnx.BatchNorm
call, with its path in the module tree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from sepnets.layers.helpers import conv_out_size, pair, resolve_pads
from sepnets.tables import aligned
from sepnets.trace import LayerCall, trace_layers

# --- the formulas -------------------------------------------------------------------------


def conv_params(kernel_size: int | tuple[int, int], in_chs: int, out_chs: int, *,
                groups: int = 1, bias: bool = False) -> int:
  """K_h*K_w*(C_in/groups)*C_out weights, plus C_out biases."""
  kh, kw = pair('kernel_size', kernel_size)
  return kh * kw * (in_chs // groups) * out_chs + (out_chs if bias else 0)


def standard_params(k: int, in_chs: int, out_chs: int) -> int:
  """K^2 * C_in * C_out."""
  return conv_params(k, in_chs, out_chs)


def depthwise_params(k: int, chs: int, multiplier: int = 1) -> int:
  """K^2 * C_in (* m)."""
  return conv_params(k, chs, chs * multiplier, groups=chs)


def pointwise_params(in_chs: int, out_chs: int) -> int:
  """C_in * C_out."""
  return conv_params(1, in_chs, out_chs)


def separable_params(k: int, in_chs: int, out_chs: int, multiplier: int = 1) -> int:
  """K^2 * C_in * m + C_in * m * C_out."""
  return depthwise_params(k, in_chs, multiplier) + pointwise_params(in_chs * multiplier, out_chs)


def valid_taps(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> int:
  """Sum over the output positions of one spatial dim of the taps that fall inside the input."""
  out = conv_out_size(size, kernel, stride, dilation, pads)
  total = 0
  for o in range(out):
    start = o * stride - pads[0]
    total += sum(1 for i in range(kernel) if 0 <= start + i * dilation < size)
  return total


def conv_macs(input_shape: Sequence[int], kernel_size: Sequence[int], out_chs: int, *,
              strides: Sequence[int], dilation: Sequence[int],
              pads: Sequence[tuple[int, int]], groups: int = 1) -> tuple[int, int]:
  """(padded-tap MACs, valid-tap MACs) of an NHWC convolution over the whole batch."""
  n, h, w, c = input_shape
  per_tap = n * (c // groups) * out_chs
  dims = list(zip((h, w), kernel_size, strides, dilation, pads))
  padded = per_tap * math.prod(conv_out_size(*d) * d[1] for d in dims)
  valid = per_tap * math.prod(valid_taps(*d) for d in dims)
  return padded, valid


# --- per-layer table ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Costs of one layer call. MACs and bytes are for the whole batch of `in_shape`."""
  path: str
  kind: str  # standard | grouped | depthwise | pointwise | linear | batchnorm
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  params: int  # trainable
  stats: int  # non-trainable (BatchNorm running mean and variance)
  macs: int  # every tap (papers)
  macs_valid: int  # taps inside the input (XLA)
  act_bytes_in: int
  act_bytes_out: int


def conv_kind(conv: nnx.Conv) -> str:
  groups, in_chs = conv.feature_group_count, conv.in_features
  if groups > 1 and groups == in_chs:
    return 'depthwise'
  if groups > 1:
    return 'grouped'
  if all(k == 1 for k in conv.kernel_size):
    return 'pointwise'
  return 'standard'


def _nbytes(shape: Sequence[int], dtype) -> int:
  return math.prod(shape) * jnp.dtype(dtype).itemsize


def call_cost(call: LayerCall) -> LayerCost:
  """The costs of one recorded layer call."""
  layer, x_shape = call.layer, call.in_shape
  io = dict(path=call.path, in_shape=x_shape, out_shape=call.out_shape,
            act_bytes_in=_nbytes(x_shape, call.in_dtype),
            act_bytes_out=_nbytes(call.out_shape, call.out_dtype))
  if isinstance(layer, nnx.Conv):
    pads = resolve_pads(layer.padding, x_shape[1:3], layer.kernel_size, layer.strides,
                        layer.kernel_dilation)
    macs, valid = conv_macs(x_shape, layer.kernel_size, layer.out_features,
                            strides=layer.strides, dilation=layer.kernel_dilation, pads=pads,
                            groups=layer.feature_group_count)
    params = conv_params(layer.kernel_size, layer.in_features, layer.out_features,
                         groups=layer.feature_group_count, bias=layer.use_bias)
    return LayerCost(kind=conv_kind(layer), params=params, stats=0, macs=macs,
                     macs_valid=valid, **io)
  if isinstance(layer, nnx.Linear):
    macs = math.prod(x_shape[:-1]) * layer.in_features * layer.out_features
    params = layer.in_features * layer.out_features + (layer.out_features if layer.use_bias else 0)
    return LayerCost(kind='linear', params=params, stats=0, macs=macs, macs_valid=macs, **io)
  chs = layer.num_features
  params = chs * (int(layer.use_scale) + int(layer.use_bias))
  return LayerCost(kind='batchnorm', params=params, stats=2 * chs, macs=0, macs_valid=0, **io)


def layer_costs(module: nnx.Module, input_shape: Sequence[int],
                dtype=jnp.float32) -> list[LayerCost]:
  """Per-layer costs of `module(x)` for an input of `input_shape`, in call order.

  Nothing is computed (see `sepnets.trace`), so this works on modules built with
  `nnx.eval_shape` too. The module's mode (train/eval) is respected.
  """
  return [call_cost(call) for call in trace_layers(module, input_shape, dtype)]


@dataclasses.dataclass(frozen=True)
class Totals:
  params: int
  stats: int
  macs: int
  macs_valid: int


def totals(rows: Sequence[LayerCost]) -> Totals:
  return Totals(params=sum(r.params for r in rows), stats=sum(r.stats for r in rows),
                macs=sum(r.macs for r in rows), macs_valid=sum(r.macs_valid for r in rows))


def format_table(rows: Sequence[LayerCost]) -> str:
  """A plain-text per-layer table with totals, like Keras' model.summary."""
  header = ('layer', 'type', 'output shape', 'params', 'MACs', 'valid MACs', 'act bytes out')
  body = [(r.path or '(root)', r.kind, 'x'.join(map(str, r.out_shape)), f'{r.params:,}',
           f'{r.macs:,}', f'{r.macs_valid:,}', f'{r.act_bytes_out:,}') for r in rows]
  t = totals(rows)
  total = ('total', '', '', f'{t.params:,}', f'{t.macs:,}', f'{t.macs_valid:,}', '')
  lines = aligned([header, *body, total], left={0, 1, 2})
  rule = '-' * len(lines[0])
  out = [lines[0], rule, *lines[1:-1], rule, lines[-1]]
  if t.stats:
    out.append(f'non-trainable statistics (BatchNorm running mean/var): {t.stats:,}')
  return '\n'.join(out)
