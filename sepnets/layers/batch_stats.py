"""BatchNorm's per-channel sums in training, one pass each, by a native kernel on CPU.

A training-mode BatchNorm reduces every conv output four times: sum x and sum x^2 for its
statistics, and sum g and sum g * x (g the output gradient) in the backward. XLA:CPU runs each
reduction as its own pass over the tensor; the native `sepnets_channel_sums` kernel
(`sepnets/native/channel_sums.cc`) gives both sums of a pair in one pass, adding runs of
float32 partial sums into float64 (closer to the exact sums than XLA's float32 reductions).

- `moments(x)`: (sum x, sum x^2) over all but the last (channel) axis; its gradient is the
  elementwise g1 + 2 x g2, which XLA fuses into the BatchNorm backward's other elementwise work.
- `scale_shift(x, a, b)`: x * a + b with per-channel a, b; its backward takes sum g and sum g * x
  from one kernel call.

Both are `jax.custom_vjp`s (no forward-mode derivative). `batch_sums` and `affine` choose per
platform at lowering time (`lax.platform_dependent`): the kernel on CPU where it can be built,
XLA's reductions elsewhere (and with `native=False`), so ahead-of-time lowering for an
accelerator is unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sepnets import native as native_kernels


def channel_sums(a: jax.Array, b: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(sum a, sum a * b) over all but the last axis of float32 `a` (and `b`, same shape), by
  the native kernel (CPU only); `b=None` gives sum a^2."""
  native_kernels.depthwise_targets()
  out = jax.ShapeDtypeStruct((a.shape[-1],), jnp.float32)
  return jax.ffi.ffi_call('sepnets_channel_sums', (out, out), vmap_method='sequential')(
      a, a if b is None else b, square=np.int64(b is None))


@jax.custom_vjp
def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum x, sum x^2) over all but the last axis, in one native pass."""
  return channel_sums(x)


def _moments_fwd(x):
  return channel_sums(x), x


def _moments_bwd(x, g):
  g_sum, g_sq = g
  return (g_sum + 2 * x * g_sq,)


moments.defvjp(_moments_fwd, _moments_bwd)


@jax.custom_vjp
def scale_shift(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """x * a + b with per-channel (last axis) a and b; the backward's sums in one native pass."""
  return x * a + b


def _scale_shift_fwd(x, a, b):
  return x * a + b, (x, a)


def _scale_shift_bwd(residuals, g):
  x, a = residuals
  g_sum, g_x = channel_sums(g, x)
  return g * a, g_x, g_sum


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


def _native_ok(x: jax.Array, axes: tuple[int, ...]) -> bool:
  """Float32, normalized over the last axis only, and the kernel buildable here."""
  return (x.dtype == jnp.float32 and axes == (x.ndim - 1,) and x.ndim >= 2
          and native_kernels.available())


def _per_platform(native, xla, x, axes, use_native, *args):
  """`native(x, *args)` on CPU where `use_native` and the kernel applies (`_native_ok`), chosen
  at lowering time; `xla(x, *args)` elsewhere."""
  if not (use_native and _native_ok(x, axes)):
    return xla(x, *args)
  return lax.platform_dependent(x, *args, cpu=native, default=xla)


def batch_sums(x: jax.Array, axes: tuple[int, ...], native: bool = True
               ) -> tuple[jax.Array, jax.Array]:
  """(mean x, mean x^2) over every axis but `axes`: the native kernel on CPU where `native`
  and it applies (`_native_ok`), XLA's reductions otherwise."""
  reduce = tuple(i for i in range(x.ndim) if i not in axes)
  count = math.prod(x.shape[i] for i in reduce)

  def xla(x):
    return x.mean(reduce), (x * x).mean(reduce)

  def kernel(x):
    total, squares = moments(x)
    return total / count, squares / count

  return _per_platform(kernel, xla, x, axes, native)


def affine(x: jax.Array, a: jax.Array, b: jax.Array, axes: tuple[int, ...],
           native: bool = True) -> jax.Array:
  """x * a + b with a, b over `axes` (shaped as those axes): `scale_shift` on CPU where
  `native` and the kernel applies, else as written."""
  shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]

  def xla(x, a, b):
    return x * a.reshape(shape) + b.reshape(shape)

  return _per_platform(scale_shift, xla, x, axes, native, a, b)
