"""Validation and shape arithmetic shared by the layers (no Flax modules here)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
from jax import lax

PADDINGS = ('same', 'symmetric', 'valid')
"""Padding modes: 'same' is TF/Keras (asymmetric on stride 2, extra pixel bottom/right),
'symmetric' is PyTorch's k//2 on both sides (scaled by dilation), 'valid' is no padding."""


def positive_int(name: str, value: object) -> int:
  """Returns `value` if it is a positive int, else raises a ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f'{name} must be a positive integer, got {value!r}')
  return value


def pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
  """Normalizes an int or a 2-sequence of positive ints to a pair."""
  if isinstance(value, int) and not isinstance(value, bool):
    return (positive_int(name, value),) * 2
  if isinstance(value, Sequence) and len(value) == 2:
    return positive_int(name, value[0]), positive_int(name, value[1])
  raise ValueError(f'{name} must be a positive integer or a pair of them, got {value!r}')


def check_padding(padding: str) -> str:
  if padding not in PADDINGS:
    raise ValueError(f'unknown padding {padding!r}; expected one of {PADDINGS}')
  return padding


def lax_padding(padding: str, kernel_size: tuple[int, int],
                dilation: tuple[int, int]) -> str | tuple[tuple[int, int], ...]:
  """Translates a padding mode to what lax.conv_general_dilated takes.

  'same' stays the string 'SAME' because its pads depend on the input size when the
  stride is 2; 'symmetric' pads d*(k-1)//2 on both sides of each spatial dim, as
  PyTorch's padding=k//2 does for odd kernels.
  """
  check_padding(padding)
  if padding == 'same':
    return 'SAME'
  if padding == 'valid':
    return 'VALID'
  return tuple((d * (k - 1) // 2,) * 2 for k, d in zip(kernel_size, dilation))


def resolve_pads(padding: str | Sequence[tuple[int, int]], in_hw: Sequence[int],
                 kernel_size: Sequence[int], strides: Sequence[int],
                 dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Explicit (low, high) pads per spatial dim for a lax padding argument."""
  if isinstance(padding, str):
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    return tuple(tuple(p) for p in lax.padtype_to_pads(tuple(in_hw), eff, tuple(strides), padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv_out_size(size: int, kernel: int, stride: int, dilation: int,
                  pads: tuple[int, int]) -> int:
  """Output length of one spatial dim of a convolution."""
  eff = (kernel - 1) * dilation + 1
  return (size + pads[0] + pads[1] - eff) // stride + 1


_CONV_SIGNATURE = inspect.signature(lax.conv_general_dilated)

NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                out_spec=(0, 3, 1, 2))
"""NHWC input, HWIO kernel, NHWC output: the layout the fast implementations handle."""


def plain_nhwc(lhs, rhs, lhs_dilation, dimension_numbers, batch_group_count,
               out_sharding) -> bool:
  """A 2-D NHWC/HWIO convolution without input dilation, batch groups or output sharding:
  what the depthwise, pointwise and dense implementations take (else they call XLA's)."""
  if lhs.ndim != 4 or rhs.ndim != 4 or batch_group_count != 1 or out_sharding is not None:
    return False
  if lhs_dilation is not None and tuple(lhs_dilation) != (1, 1):
    return False
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == NHWC


def conv_windows(x, kernel_hw: tuple[int, int], strides: Sequence[int],
                 padding: str | Sequence[tuple[int, int]],
                 dilation: Sequence[int] | None) -> list:
  """The KH*KW shifted, strided windows of NHWC `x` zero-padded by `padding`, in (i, j) order:
  the sum over (i, j) of window (i, j) times tap (i, j) is the convolution's output."""
  n, h, w, c = x.shape
  kh, kw = kernel_hw
  sh, sw = strides
  dh, dw = tuple(dilation) if dilation is not None else (1, 1)
  (plo, phi), (qlo, qhi) = resolve_pads(padding, (h, w), (kh, kw), (sh, sw), (dh, dw))
  x = lax.pad(x, lax.full((), 0, x.dtype), ((0, 0, 0), (plo, phi, 0), (qlo, qhi, 0), (0, 0, 0)))
  ho = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
  wo = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
  return [lax.slice(x, (0, i * dh, j * dw, 0),
                    (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def window_geometry(geometry, in_hw):
  """`((kh, kw), strides, dilation, pads, (ho, wo))` of a 2-D window op: `geometry` is
  `((kh, kw), strides, padding, dilation or None)`, `in_hw` the input's (H, W)."""
  (kh, kw), strides, padding, dilation = geometry
  dilation = dilation or (1, 1)
  pads = resolve_pads(padding, in_hw, (kh, kw), strides, dilation)
  outs = tuple(conv_out_size(n, k, s, d, p)
               for n, k, s, d, p in zip(in_hw, (kh, kw), strides, dilation, pads))
  return (kh, kw), strides, dilation, pads, outs


def forward_index(out_len, in_len, kernel, stride, dilation, low):
  """(out_len, kernel) input positions read by each output position and tap; invalid ones
  (in the zero padding) are clamped into range and flagged False."""
  pos = jnp.arange(out_len)[:, None] * stride + jnp.arange(kernel)[None, :] * dilation - low
  return jnp.clip(pos, 0, in_len - 1), (pos >= 0) & (pos < in_len)


def transpose_index(in_len, out_len, kernel, stride, dilation, low):
  """(in_len, kernel) output positions that each input position and tap contributed to."""
  num = jnp.arange(in_len)[:, None] + low - jnp.arange(kernel)[None, :] * dilation
  valid = (num % stride == 0) & (num >= 0) & (num // stride < out_len)
  return jnp.clip(num // stride, 0, out_len - 1), valid


def gather_windows(src, rows, row_ok, cols, col_ok):
  """(N, P, Q, K*L, C): src[n, rows[p, k], cols[q, l], c], zero where not row_ok & col_ok."""
  (p, k), (q, l) = rows.shape, cols.shape
  index = jnp.stack(jnp.broadcast_arrays(rows[:, None, :, None], cols[None, :, None, :]), -1)
  windows = lax.gather(
      src, index.reshape(p, q, k * l, 2),
      lax.GatherDimensionNumbers(offset_dims=(0, 4), collapsed_slice_dims=(1, 2),
                                 start_index_map=(1, 2)),
      slice_sizes=(src.shape[0], 1, 1, src.shape[3]),
      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  ok = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(1, p, q, k * l, 1)
  return jnp.where(ok, windows, jnp.zeros((), src.dtype))


def platform_auto(choices: Callable[[], Mapping[str, Callable]], default: Callable,
                  doc: str) -> Callable:
  """A function with `lax.conv_general_dilated`'s signature that calls `choices()[platform]`
  (read at each call) for the platform being lowered for, else `default`. The choice is made
  at lowering time by `lax.platform_dependent`, so ahead-of-time lowering for a TPU or GPU on
  a CPU host still gets the accelerator's choice."""

  def auto(lhs, rhs, *args, **kwargs):
    named = _CONV_SIGNATURE.bind(lhs, rhs, *args, **kwargs).arguments
    named = {k: v for k, v in named.items() if k not in ('lhs', 'rhs')}
    branches = {platform: functools.partial(fn, **named) for platform, fn in choices().items()}
    return lax.platform_dependent(lhs, rhs, default=functools.partial(default, **named),
                                  **branches)

  auto.__doc__ = doc
  return auto


def lookup(table: Mapping[str, Callable], name: str, what: str) -> Callable:
  """`table[name]`; an unknown name raises a ValueError listing the valid ones."""
  try:
    return table[name]
  except (KeyError, TypeError):
    raise ValueError(f'unknown {what} {name!r}; expected one of {sorted(table)}') from None
