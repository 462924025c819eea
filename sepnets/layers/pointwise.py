"""Pointwise (1x1) convolution implementations.

Each has `lax.conv_general_dilated`'s signature and is passed to `nnx.Conv`, like the depthwise
strategies, so the parameter tree (a (1, 1, C_in, C_out) HWIO kernel) does not depend on it.

- `conv`: XLA's convolution, the reference.
- `dot`: the channel contraction as a `dot_general` over the last axis (strided 1x1 convs slice
  first). On XLA:CPU a 1x1 `convolution` and, above all, its weight gradient (a contraction
  over N*H*W) run far below the matmul kernels a `dot` gets (`benchmarks/peers.py` shows the
  whole-model effect).
- `auto`: `dot` on CPU, `conv` elsewhere (chosen per platform at lowering time).

A convolution `dot` does not implement (not 1x1, grouped, padded, dilated input, not NHWC)
is computed with the reference, so it is always a drop-in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax import lax

from sepnets.layers.helpers import lookup, plain_nhwc, platform_auto, resolve_pads

AUTO_CHOICE = {'cpu': 'dot'}
"""Per-platform choice of `auto`; platforms not listed use `conv`."""


conv = lax.conv_general_dilated
"""XLA's convolution (the reference implementation)."""


def _is_plain_pointwise(lhs, rhs, window_strides, padding, lhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count, out_sharding) -> bool:
  if not plain_nhwc(lhs, rhs, lhs_dilation, dimension_numbers, batch_group_count, out_sharding):
    return False
  if feature_group_count != 1 or rhs.shape[:2] != (1, 1):
    return False
  pads = resolve_pads(padding, lhs.shape[1:3], (1, 1), window_strides, (1, 1))
  return all(p == (0, 0) for p in pads)


def dot(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
        padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
        feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
        preferred_element_type=None, out_sharding=None) -> jax.Array:
  """A 1x1 convolution as a contraction of the channel axis with the (C_in, C_out) kernel."""
  if not _is_plain_pointwise(lhs, rhs, window_strides, padding, lhs_dilation,
                             dimension_numbers, feature_group_count, batch_group_count,
                             out_sharding):
    return conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, batch_group_count, precision,
                preferred_element_type, out_sharding)
  sh, sw = window_strides
  if (sh, sw) != (1, 1):
    lhs = lhs[:, ::sh, ::sw, :]
  return channel_matmul(lhs, rhs[0, 0], precision, preferred_element_type)


def channel_matmul(x: jax.Array, kernel: jax.Array, precision=None,
                   preferred_element_type=None) -> jax.Array:
  """(N, H, W, C_in) x (C_in, C_out) -> (N, H, W, C_out) as one rank-2 product.

  XLA:CPU hands a rank-2 (N*H*W, C_in) product and both of its gradients to its matmul
  kernels; with the rank-4 operand it transposes the weight gradient's inputs and runs a
  slower, non-library dot.
  """
  n, h, w, c = x.shape
  out = lax.dot_general(x.reshape(n * h * w, c), kernel, (((1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
  return out.reshape(n, h, w, kernel.shape[1])


auto = platform_auto(
    lambda: {platform: IMPLS[name] for platform, name in AUTO_CHOICE.items()}, conv,
    'The measured-fastest implementation for the platform being lowered for (AUTO_CHOICE).')


IMPLS: dict[str, Callable[..., jax.Array]] = {'conv': conv, 'dot': dot, 'auto': auto}


def get_impl(name: str) -> Callable[..., jax.Array]:
  """Pointwise implementation by name; unknown names raise listing the valid ones."""
  return lookup(IMPLS, name, 'pointwise implementation')
