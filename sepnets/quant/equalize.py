"""Cross-layer equalization: the data-free fix for per-tensor weight scales.

Nagel et al. 2019, Data-Free Quantization Through Weight Equalization and Bias Correction
(https://arxiv.org/abs/1906.04721), section 4.1. For two layers where the second consumes the
first's ReLU output directly, relu(x / s) * s = relu(x) for s > 0, so output channel i of the
first layer can be divided by s_i and input channel i of the second multiplied by s_i without
changing the function. With r1_i, r2_i the ranges of those channels (BatchNorm folded), s_i =
sqrt(r1_i / r2_i) makes both sqrt(r1_i r2_i): the channel that folding blew up in a depthwise
kernel is brought back in line with its neighbours. ReLU6 is not scale-equivariant; as in the
paper, equalized pairs with ReLU6 switch it to ReLU (a change to the float model, reported).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.quant.layers import QConv, QConvNormAct, _QuantLayer, trace_calls

HOMOGENEOUS = ('relu', 'relu6')


def find_pairs(model: nnx.Module) -> list[tuple[QConvNormAct, _QuantLayer]]:
  """(first, second) pairs of a quantized model: `first` has a ReLU or ReLU6, and its output is
  the input of exactly one layer, `second` (a conv), with nothing in between."""
  calls = trace_calls(model)
  pairs = []
  for first, _, out in calls:
    if not isinstance(first, QConvNormAct) or first.act_name not in HOMOGENEOUS:
      continue
    consumers = [layer for layer, x, _ in calls if x is out]
    if len(consumers) == 1 and isinstance(consumers[0], (QConvNormAct, QConv)):
      pairs.append((first, consumers[0]))
  return pairs


def _conv(layer: _QuantLayer):
  return layer.conv


def _input_ranges(layer: _QuantLayer) -> jax.Array:
  """Per input channel absmax of the second layer's (folded) kernel."""
  kernel, _ = layer.folded()
  conv = _conv(layer)
  groups = conv.feature_group_count
  if groups == 1:
    return jnp.max(jnp.abs(kernel), axis=(0, 1, 3))
  if kernel.shape[2] != 1:
    raise ValueError(f'{layer.path}: cross-layer equalization needs a dense or depthwise conv')
  per_out = jnp.max(jnp.abs(kernel), axis=(0, 1, 2))  # (C*m,)
  return jnp.max(per_out.reshape(groups, -1), axis=1)


def _scale_input_channels(layer: _QuantLayer, s: jax.Array) -> None:
  conv = _conv(layer)
  kernel = conv.kernel[...]
  if conv.feature_group_count == 1:
    conv.kernel[...] = kernel * s[None, None, :, None]
  else:
    conv.kernel[...] = kernel * jnp.repeat(s, kernel.shape[-1] // s.shape[0])[None, None, None]


def _scale_output_channels(layer: QConvNormAct, inv: jax.Array) -> None:
  """Divides the first layer's folded kernel and bias by s (inv = 1 / s), through BatchNorm's
  scale and shift when it has one."""
  if layer.bn is not None:
    layer.bn.scale[...] = layer.bn.scale[...] * inv
    layer.bn.bias[...] = layer.bn.bias[...] * inv
  else:
    layer.conv.kernel[...] = layer.conv.kernel[...] * inv
    if layer.conv.bias is not None:
      layer.conv.bias[...] = layer.conv.bias[...] * inv


def equalize(model: nnx.Module, *, iterations: int = 10) -> dict[str, Any]:
  """Equalizes every pair of `find_pairs` in place, `iterations` sweeps (a layer between two
  pairs is pulled both ways, so the sweeps repeat until the ranges settle). Returns the pairs
  and the largest remaining per-pair range ratio."""
  if iterations < 1:
    raise ValueError(f'iterations must be >= 1, got {iterations}')
  pairs = find_pairs(model)
  switched = []
  for first, _ in pairs:
    if first.act_name == 'relu6':
      first.act_name, first.act = 'relu', jax.nn.relu
      switched.append(first.path)
  for _ in range(iterations):
    for first, second in pairs:
      kernel, _ = first.folded()
      r1 = jnp.max(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
      r2 = _input_ranges(second)
      ok = (r1 > 0) & (r2 > 0)
      s = jnp.where(ok, jnp.sqrt(jnp.where(ok, r1 / r2, 1.0)), 1.0)
      _scale_output_channels(first, 1.0 / s)
      _scale_input_channels(second, s)
  return {'pairs': [(a.path, b.path) for a, b in pairs], 'relu6_to_relu': switched}
