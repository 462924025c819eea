"""Validation and shape arithmetic shared by the layers (no Flax modules here)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

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
