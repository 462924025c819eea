"""Dense K x K convolution implementations (for StandardConv; the stems of the zoo).

Same contract as the depthwise strategies and pointwise implementations: the signature of
`lax.conv_general_dilated`, the parameter tree independent of the choice.

- `conv`: XLA's convolution, the reference.
- `im2col`: the (N, Ho, Wo, K*K*C_in) patches of the input, times the (K*K*C_in, C_out)
  kernel as one rank-2 dot. One gather builds the patches in one loop, the zero padding a
  mask (gathering from a padded input was slower). Concatenating the K*K shifted windows
  instead made XLA:CPU write each window and then the concatenation (mobilenet_v3_large's
  stem at batch 32: 12.3 ms forward against 5.4 ms gathered, 2 cores). It writes K*K copies
  of the input, so it pays only where the input has few channels (an image stem); with 64
  channels XLA's convolution was the faster forward in a first measurement on 2 cores.
- `auto`: `im2col` on CPU for inputs of at most `AUTO_MAX_IN_CHS` channels, else `conv`.

What `im2col` does not implement (grouped, input dilation, not NHWC) goes to the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from sepnets.layers.helpers import (forward_index, gather_windows, lookup, plain_nhwc,
                                    platform_auto, window_geometry)
from sepnets.layers.pointwise import channel_matmul, conv

AUTO_MAX_IN_CHS = 4
"""`auto` uses `im2col` on CPU up to this many input channels (image stems), else `conv`."""


def im2col(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
           padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
           rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
           feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
           preferred_element_type=None, out_sharding=None) -> jax.Array:
  """A dense convolution as one dot over the K*K windows (patches) of the input."""
  if feature_group_count != 1 or not plain_nhwc(lhs, rhs, lhs_dilation, dimension_numbers,
                                                batch_group_count, out_sharding):
    return conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, batch_group_count, precision,
                preferred_element_type, out_sharding)
  kh, kw, c, out_c = rhs.shape
  _, (sh, sw), (dh, dw), pads, (ho, wo) = window_geometry(
      ((kh, kw), tuple(window_strides), padding, rhs_dilation), lhs.shape[1:3])
  rows, row_ok = forward_index(ho, lhs.shape[1], kh, sh, dh, pads[0][0])
  cols, col_ok = forward_index(wo, lhs.shape[2], kw, sw, dw, pads[1][0])
  # channel index (i * KW + j) * C + c matches the HWIO kernel flattened over (H, W, I)
  patches = gather_windows(lhs, rows, row_ok, cols, col_ok).reshape(
      lhs.shape[0], ho, wo, kh * kw * c)
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
