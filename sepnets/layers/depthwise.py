"""Depthwise convolution implementation strategies.

Each strategy has `lax.conv_general_dilated`'s signature and is passed to
`nnx.Conv(conv_general_dilated=...)`, so the parameter tree (a (K, K, 1, C*m) HWIO kernel)
is the same for every strategy and checkpoints move freely between them.

- `grouped`: XLA's feature_group_count convolution, the reference.
- `shift`: K*K shifted multiply-adds over the padded input, which XLA fuses into one loop
  (strided slices times per-channel taps). XLA:CPU's grouped convolution is far below what
  the hardware allows; this formulation is not.
- `auto`: `shift` on CPU and `grouped` elsewhere, chosen at lowering time per platform by
  `lax.platform_dependent`, so ahead-of-time lowering for a TPU or GPU on a CPU host still
  gets the accelerator's choice. The CPU choice comes from `sepnets layers`' measurements.

A strategy that receives a convolution it does not implement (not depthwise, not 2-D NHWC,
input dilation, batch groups) computes it with the reference, so it is always a drop-in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sepnets.layers.helpers import conv_windows, lookup, plain_nhwc, platform_auto

ConvFn = Callable[..., jax.Array]

AUTO_CHOICE = {'cpu': 'shift'}
"""Per-platform choice of `auto`; platforms not listed use `grouped`."""


def grouped(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
            padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
            rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
            feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
            preferred_element_type=None, out_sharding=None) -> jax.Array:
  """XLA's grouped convolution (the reference strategy)."""
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def _is_plain_depthwise(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count,
                        batch_group_count, out_sharding) -> bool:
  if not plain_nhwc(lhs, rhs, lhs_dilation, dimension_numbers, batch_group_count, out_sharding):
    return False
  channels = lhs.shape[3]
  return feature_group_count == channels and rhs.shape[2] == 1 and rhs.shape[3] % channels == 0


def shift(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
          padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
          rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
          feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
          preferred_element_type=None, out_sharding=None) -> jax.Array:
  """Depthwise convolution as a sum of K*K shifted, strided slices times per-channel taps.

  Accumulates in float32 (or `preferred_element_type`) whatever the input dtype, as a
  convolution unit would, then casts to the result dtype.
  """
  if not _is_plain_depthwise(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count,
                             batch_group_count, out_sharding):
    return grouped(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, batch_group_count, precision,
                   preferred_element_type, out_sharding)
  kh, kw, _, out_c = rhs.shape
  multiplier = out_c // lhs.shape[3]
  out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
  acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
  x = jnp.repeat(lhs, multiplier, axis=3) if multiplier > 1 else lhs  # output o reads input o // m
  taps = rhs[:, :, 0, :].astype(acc_dtype).reshape(kh * kw, out_c)
  acc = None
  for window, tap in zip(conv_windows(x, (kh, kw), window_strides, padding, rhs_dilation), taps):
    term = window.astype(acc_dtype) * tap
    acc = term if acc is None else acc + term
  return acc.astype(out_dtype)


auto = platform_auto(
    lambda: {platform: STRATEGIES[name] for platform, name in AUTO_CHOICE.items()}, grouped,
    'The measured-fastest strategy for the platform being lowered for (AUTO_CHOICE).')

STRATEGIES: dict[str, ConvFn] = {'grouped': grouped, 'shift': shift, 'auto': auto}


def get_strategy(name: str) -> ConvFn:
  """Strategy function by name; unknown names raise listing the valid ones."""
  return lookup(STRATEGIES, name, 'depthwise strategy')
