"""Dense K x K convolution implementations (for StandardConv; the stems of the zoo).

Same contract as the depthwise strategies and pointwise implementations: the signature of
`lax.conv_general_dilated`, the parameter tree independent of the choice.

- `conv`: XLA's convolution, the reference.
- `im2col`: the K*K shifted, strided windows of the padded input concatenated on the channel
  axis, times the (K*K*C_in, C_out) kernel as one rank-2 dot. It writes K*K copies of the
  input, so it pays only where the input has few channels (an image stem); with 64 channels
  XLA's convolution was the faster forward in a first measurement on 2 cores.
- `auto`: `im2col` on CPU for inputs of at most `AUTO_MAX_IN_CHS` channels, else `conv`.

What `im2col` does not implement (grouped, input dilation, not NHWC) goes to the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sepnets.layers.helpers import NHWC, lookup, platform_auto, resolve_pads
from sepnets.layers.pointwise import channel_matmul, conv

AUTO_MAX_IN_CHS = 4
"""`auto` uses `im2col` on CPU up to this many input channels (image stems), else `conv`."""


def _is_plain_dense(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count,
                    batch_group_count, out_sharding) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4 or out_sharding is not None:
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if lhs_dilation is not None and tuple(lhs_dilation) != (1, 1):
    return False
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == NHWC


def im2col(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
           padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
           rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
           feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
           preferred_element_type=None, out_sharding=None) -> jax.Array:
  """A dense convolution as one dot over the concatenated K*K windows of the input."""
  if not _is_plain_dense(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count,
                         batch_group_count, out_sharding):
    return conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, batch_group_count, precision,
                preferred_element_type, out_sharding)
  n, h, w, c = lhs.shape
  kh, kw, _, out_c = rhs.shape
  sh, sw = window_strides
  dh, dw = tuple(rhs_dilation) if rhs_dilation is not None else (1, 1)
  (plo, phi), (qlo, qhi) = resolve_pads(padding, (h, w), (kh, kw), (sh, sw), (dh, dw))
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (plo, phi, 0), (qlo, qhi, 0), (0, 0, 0)))
  ho = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
  wo = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
  windows = [lax.slice(x, (0, i * dh, j * dw, 0),
                       (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                       (1, sh, sw, 1))
             for i in range(kh) for j in range(kw)]
  # channel index (i * KW + j) * C + c matches the HWIO kernel flattened over (H, W, I)
  patches = jnp.concatenate(windows, axis=3) if len(windows) > 1 else windows[0]
  return channel_matmul(patches, rhs.reshape(kh * kw * c, out_c), precision,
                        preferred_element_type)


def _cpu_choice(lhs, rhs, *args, **kwargs):
  impl = im2col if lhs.shape[-1] <= AUTO_MAX_IN_CHS else conv
  return impl(lhs, rhs, *args, **kwargs)


auto = platform_auto(
    lambda: {'cpu': _cpu_choice}, conv,
    '`im2col` on CPU for few input channels, else the reference (see the module docstring).')


IMPLS: dict[str, Callable[..., jax.Array]] = {'conv': conv, 'im2col': im2col, 'auto': auto}


def get_impl(name: str) -> Callable[..., jax.Array]:
  """Dense-conv implementation by name; unknown names raise listing the valid ones."""
  return lookup(IMPLS, name, 'dense conv implementation')
