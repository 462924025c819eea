"""Depthwise convolution implementation strategies.

Each strategy has `lax.conv_general_dilated`'s signature and is passed to
`nnx.Conv(conv_general_dilated=...)`, so the parameter tree (a (K, K, 1, C*m) HWIO kernel)
is the same for every strategy and checkpoints move freely between them.

- `grouped`: XLA's feature_group_count convolution, the reference.
- `shift`: K*K shifted multiply-adds over the padded input, which XLA fuses into one loop
  (strided slices times per-channel taps). XLA:CPU's grouped convolution is far below what
  the hardware allows; this formulation is not. Its backward is its own (`input_grads`,
  `tap_grads`: gathered windows, one loop each) rather than autodiff of the slices, which
  XLA:CPU compiles into K*K materialized windows. Being a `jax.custom_vjp`, it has no
  forward-mode derivative (`jax.jvp`, `jax.jacfwd`); `grouped` has both.
- `native`: XLA:CPU custom calls into C++ kernels (`sepnets/native/depthwise.cc`, built on
  first use; register blocks of output columns, each source vector loaded once per row, the
  next source row prefetched) for the forward pass, the input gradient and the tap gradient.
  float32 with channel multiplier 1 only; other dtypes and multipliers go to `shift`. CPU only
  (a custom call has no other backend), and XLA neither fuses into nor counts a custom call
  (`sepnets.compile.hlo_cost` counts it as the convolution it computes).
- `auto`: `native` on CPU (`shift` where the native kernels cannot be built) and `grouped`
  elsewhere, chosen at lowering time per platform by `lax.platform_dependent`, so
  ahead-of-time lowering for a TPU or GPU on a CPU host still gets the accelerator's choice.
  The CPU choice comes from the peers benchmark's and `sepnets layers`' measurements.

A strategy that receives a convolution it does not implement (not depthwise, not 2-D NHWC,
input dilation, batch groups) computes it with the reference, so it is always a drop-in.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sepnets import native as native_kernels
from sepnets.layers.activations import get_act
from sepnets.layers.helpers import (conv_out_size, conv_windows, forward_index, gather_windows,
                                    lookup, plain_nhwc, platform_auto, resolve_pads,
                                    transpose_index, window_geometry)

ConvFn = Callable[..., jax.Array]

AUTO_CHOICE = {'cpu': 'native'}
"""Per-platform choice of `auto`; platforms not listed use `grouped`. `native` falls back to
`shift` where its kernels cannot be built (see `auto_choice`)."""
NATIVE_FALLBACK = 'shift'


def auto_choice(platform: str) -> str:
  """The strategy `auto` runs on `platform` in this process."""
  name = AUTO_CHOICE.get(platform, 'grouped')
  if name == 'native' and not native_kernels.available():
    if not _warned:
      _warned.append(True)
      warnings.warn(f'sepnets: depthwise strategy auto runs {NATIVE_FALLBACK!r} on CPU: '
                    f'{native_kernels.unavailable_reason()}', RuntimeWarning, stacklevel=2)
    return NATIVE_FALLBACK
  return name


_warned: list[bool] = []


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
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
  acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
  x = jnp.repeat(lhs, multiplier, axis=3) if multiplier > 1 else lhs  # output o reads input o // m
  taps = rhs[:, :, 0, :].astype(acc_dtype).reshape(kh * kw, out_c)
  padding = padding if isinstance(padding, str) else tuple(tuple(int(p) for p in pair)
                                                           for pair in padding)
  geometry = ((kh, kw), tuple(window_strides), padding,
              None if rhs_dilation is None else tuple(rhs_dilation))
  return _shift_conv(geometry, out_dtype, x, taps)


def _weighted_sum(windows, taps):
  """sum_t windows[t] * taps[t], in the taps' (accumulation) dtype."""
  acc = None
  for window, tap in zip(windows, taps):
    term = window.astype(taps.dtype) * tap
    acc = term if acc is None else acc + term
  return acc


def _windows_times_taps(geometry, out_dtype, x, taps):
  return _weighted_sum(conv_windows(x, *geometry), taps).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _shift_conv(geometry, out_dtype, x, taps):
  return _windows_times_taps(geometry, out_dtype, x, taps)


def _shift_conv_fwd(geometry, out_dtype, x, taps):
  return _windows_times_taps(geometry, out_dtype, x, taps), (x, taps)


def _shift_conv_bwd(geometry, out_dtype, residuals, g):
  x, taps = residuals
  return (input_grads(geometry, g, taps, x.shape[1:3]).astype(x.dtype),
          tap_grads(geometry, x, g).astype(taps.dtype))


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)

TAP_GRAD_BLOCK = 8
"""Output columns summed inside the fused loop of `tap_grads` before the final reduction, for
kernels of up to 9 taps; twice that for larger ones (5x5: 25 partial sums per position)."""


def _column_block(width: int, target: int) -> int:
  if width <= target:
    return width
  return next((b for b in range(target, target // 2 - 1, -1) if width % b == 0), target)


def input_grads(geometry, g, taps, in_hw):
  """The gradient of a depthwise convolution's input: the transposed convolution of `g`.

  Autodiff of `shift` adds K*K padded (for stride 2, interleaved) copies of `g` times a tap,
  and XLA:CPU recomputes `g`'s producers in each; here each input position gathers the
  K*K output positions it fed (zero where none) from `g`, materialized once. Kernels larger
  than 3x3 at stride 1 instead run `shift`'s forward over `g` with the kernel flipped.
  """
  (kh, kw), (sh, sw), (dh, dw), pads, (ho, wo) = window_geometry(geometry, in_hw)
  if (sh, sw) == (1, 1) and kh * kw > 9:  # measured: the gather loses to slices past 3x3
    flipped = ((kh, kw), (1, 1), ((dh * (kh - 1) - pads[0][0], dh * (kh - 1) - pads[0][1]),
                                  (dw * (kw - 1) - pads[1][0], dw * (kw - 1) - pads[1][1])),
               geometry[3])
    return _windows_times_taps(flipped, taps.dtype, g, taps[::-1])
  rows, row_ok = transpose_index(in_hw[0], ho, kh, sh, dh, pads[0][0])
  cols, col_ok = transpose_index(in_hw[1], wo, kw, sw, dw, pads[1][0])
  windows = gather_windows(g, rows, row_ok, cols, col_ok)
  return _weighted_sum((windows[:, :, :, t] for t in range(kh * kw)), taps)


def tap_grads(geometry, x: jax.Array, g: jax.Array) -> jax.Array:
  """The gradient of a depthwise convolution's (K*K, C) taps: for each tap (i, j), the sum over
  batch and output positions of window (i, j) of `x` times the output gradient `g`.

  Written per tap (what autodiff of `shift` gives), XLA:CPU materializes every window, because
  the YNNPACK reductions it uses take no slices: K*K windows written and read back. Here one
  gather builds all K*K windows inside one loop fusion, which multiplies them by `g` and sums
  blocks of `TAP_GRAD_BLOCK` output columns (zero-padded when the width has no divisor from
  half to all of that); only this partial, 1/block of the windows' size, is reduced.
  Accumulates in float32 at least.
  """
  (kh, kw), (sh, sw), (dh, dw), pads, (ho, wo) = window_geometry(geometry, x.shape[1:3])
  acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
  n, c = x.shape[0], x.shape[3]
  block = _column_block(wo, TAP_GRAD_BLOCK * (1 if kh * kw <= 9 else 2))
  wide = -(-wo // block) * block
  rows, row_ok = forward_index(ho, x.shape[1], kh, sh, dh, pads[0][0])
  cols, col_ok = forward_index(wide, x.shape[2], kw, sw, dw, pads[1][0])
  col_ok = col_ok & (jnp.arange(wide) < wo)[:, None]
  windows = gather_windows(x, rows, row_ok, cols, col_ok)
  g = jnp.pad(g, ((0, 0), (0, 0), (0, wide - wo), (0, 0))) if wide > wo else g
  terms = (windows.astype(acc_dtype) * g.astype(acc_dtype)[:, :, :, None, :]).reshape(
      n, ho, wide // block, block, kh * kw, c)
  partial = terms[:, :, :, 0]
  for k in range(1, block):
    partial = partial + terms[:, :, :, k]
  # The second, negligible use of `partial` keeps XLA from fusing the additions above into
  # the reduction (which would split the loop and materialize the gathered windows).
  return partial.sum((0, 1, 2)) + 0 * partial[0, 0, 0]


def native(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
           padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
           rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
           feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
           preferred_element_type=None, out_sharding=None) -> jax.Array:
  """Depthwise convolution by the native XLA:CPU kernels (float32, multiplier 1; else `shift`).

  Raises `sepnets.native.NativeUnavailable` naming the reason when the kernels cannot be
  built here. Like `shift`, a `jax.custom_vjp`: no forward-mode derivative.
  """
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type,
          out_sharding)
  if not _is_plain_depthwise(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count,
                             batch_group_count, out_sharding):
    return grouped(*args)
  f32 = jnp.dtype(jnp.float32)
  if (lhs.dtype != f32 or rhs.dtype != f32 or rhs.shape[3] != lhs.shape[3]
      or jnp.dtype(preferred_element_type or f32) != f32):
    return shift(*args)
  native_kernels.depthwise_targets()
  geometry = _native_geometry(lhs, rhs, window_strides, padding, rhs_dilation or (1, 1))
  return _native_conv(geometry, lhs, _taps(rhs))


def _native_geometry(x, kernel, strides, padding, dilation):
  """((kh, kw), strides, explicit pads, dilation) of a native kernel call, as plain ints."""
  kh, kw = kernel.shape[:2]
  pads = resolve_pads(padding, x.shape[1:3], (kh, kw), strides, dilation)
  return (kh, kw), tuple(int(v) for v in strides), pads, tuple(int(d) for d in dilation)


def _taps(kernel):
  """A (KH, KW, 1, C) depthwise kernel as the native kernels' (KH*KW, C) taps."""
  return kernel[:, :, 0, :].reshape(kernel.shape[0] * kernel.shape[1], kernel.shape[3])


def _ffi_attrs(geometry):
  (kh, kw), (sh, sw), ((ph, _), (pw, _)), (dh, dw) = geometry
  return {name: np.int64(v) for name, v in
          dict(kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, ph=ph, pw=pw).items()}


def _native_out_shape(geometry, x):
  (kh, kw), strides, pads, dilation = geometry
  out_hw = tuple(conv_out_size(n, k, s, d, p) for n, k, s, d, p in
                 zip(x.shape[1:3], (kh, kw), strides, dilation, pads))
  return (x.shape[0], *out_hw, x.shape[3])


# The kernels' calls below take the targets' names with `suffix` appended: another build of the
# kernels registered under other names (benchmarks/native_ab.py) runs through the same calls.
def _native_forward(geometry, x, taps, suffix=''):
  out = jax.ShapeDtypeStruct(_native_out_shape(geometry, x), x.dtype)
  return jax.ffi.ffi_call('sepnets_dw_conv' + suffix, out, vmap_method='sequential')(
      x, taps, transposed=np.int64(0), **_ffi_attrs(geometry))


def _native_input_grad(geometry, g, taps, in_hw, suffix=''):
  (kh, kw), strides, pads, (dh, dw) = geometry
  if tuple(strides) == (1, 1):  # a forward window over g with the taps flipped
    flipped = ((kh, kw), (1, 1), ((dh * (kh - 1) - pads[0][0], dh * (kh - 1) - pads[0][1]),
                                  (dw * (kw - 1) - pads[1][0], dw * (kw - 1) - pads[1][1])),
               (dh, dw))
    return _native_forward(flipped, g, taps[::-1], suffix)
  out = jax.ShapeDtypeStruct((g.shape[0], *in_hw, g.shape[3]), g.dtype)
  return jax.ffi.ffi_call('sepnets_dw_conv' + suffix, out, vmap_method='sequential')(
      g, taps, transposed=np.int64(1), **_ffi_attrs(geometry))


def _native_tap_grad(geometry, x, g, suffix=''):
  out = jax.ShapeDtypeStruct((geometry[0][0] * geometry[0][1], x.shape[3]), x.dtype)
  return jax.ffi.ffi_call('sepnets_dw_tap_grad' + suffix, out, vmap_method='sequential')(
      x, g, **_ffi_attrs(geometry))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _native_conv(geometry, x, taps):
  return _native_forward(geometry, x, taps)


def _native_conv_fwd(geometry, x, taps):
  return _native_forward(geometry, x, taps), (x, taps)


def _native_conv_bwd(geometry, residuals, g):
  x, taps = residuals
  return (_native_input_grad(geometry, g, taps, x.shape[1:3]),
          _native_tap_grad(geometry, x, g))


_native_conv.defvjp(_native_conv_fwd, _native_conv_bwd)

NATIVE_ACTS = {None: 0, 'identity': 0, 'relu': 1, 'relu6': 2, 'hard_swish': 3, 'swish': 4}
"""Activations the native kernel applies in its epilogue (its `act` codes); others run after."""


def affine_act(x: jax.Array, scale: jax.Array, bias: jax.Array, act: str | None) -> jax.Array:
  """`act(x * scale + bias)`, per channel: an eval-mode BatchNorm and its activation."""
  return get_act(act)(x * scale + bias)


def conv_affine_act(strategy: str, x: jax.Array, kernel: jax.Array, scale: jax.Array,
                    bias: jax.Array, act: str | None, strides: Sequence[int],
                    padding: str | Sequence[tuple[int, int]], dilation: Sequence[int], *,
                    act_in: tuple[jax.Array, jax.Array, str | None] | None = None
                    ) -> jax.Array:
  """`act(depthwise(x, kernel) * scale + bias)` with per-channel `scale` and `bias`: a
  depthwise conv followed by an eval-mode BatchNorm and its activation. With
  `act_in=(in_scale, in_bias, in_act)` the conv's input is `in_act(x * in_scale + in_bias)`
  instead of `x` (zero padding after it): the eval-mode BatchNorm and activation of the layer
  before, whose output then is never stored.

  With `native` (and `auto` on CPU) it is one kernel call: `scale` folded into the taps, the
  shift and the activation (`NATIVE_ACTS`; others run after it) applied as each output
  block is stored, so the output is written once instead of written, read and written again
  (XLA cannot fuse into a custom call); `act_in` (with an activation in `NATIVE_ACTS`; others
  run before the call) is applied to each source row once as the kernel reads it, so the
  input is read once instead of read, written and read again. Folding the scale into the taps
  rounds differently from scaling the sum (a few ulps). Its gradient is that of the unfused
  native form. Other strategies compute the expression as written.
  """
  def composed(conv, x, kernel, scale, bias, *pre):
    if pre:
      x = affine_act(x, *pre, act_in[2])
    y = conv(x, kernel, strides, padding, rhs_dilation=dilation,
             dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[3])
    return affine_act(y, scale, bias, act)

  def fused(x, kernel, scale, bias, *pre):
    f32 = jnp.dtype(jnp.float32)
    if not all(a.dtype == f32 for a in (x, kernel, scale, bias, *pre)) or (
        kernel.shape[3] != x.shape[3]):
      return composed(native, x, kernel, scale, bias, *pre)
    native_kernels.depthwise_targets()
    geometry = _native_geometry(x, kernel, strides, padding, dilation)
    if pre and act_in[2] not in NATIVE_ACTS:
      x, pre = affine_act(x, *pre, act_in[2]), ()
    if pre:
      y = _native_act_affine_act(geometry, (act_in[2], act), x, _taps(kernel), scale, bias,
                                 *pre)
    else:
      y = _native_affine_act(geometry, act, x, _taps(kernel), scale, bias)
    return y if act in NATIVE_ACTS else get_act(act)(y)

  pre = act_in[:2] if act_in is not None else ()
  if strategy == 'native':
    return fused(x, kernel, scale, bias, *pre)
  if strategy == 'auto':
    branches = {platform: fused if auto_choice(platform) == 'native'
                else functools.partial(composed, STRATEGIES[auto_choice(platform)])
                for platform in AUTO_CHOICE}
    return lax.platform_dependent(x, kernel, scale, bias, *pre,
                                  default=functools.partial(composed, grouped), **branches)
  return composed(get_strategy(strategy), x, kernel, scale, bias, *pre)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _native_affine_act(geometry, act, x, taps, scale, bias):
  out = jax.ShapeDtypeStruct(_native_out_shape(geometry, x), x.dtype)
  return jax.ffi.ffi_call('sepnets_dw_conv_bias_act', out, vmap_method='sequential')(
      x, taps * scale, bias, act=np.int64(NATIVE_ACTS.get(act, 0)), **_ffi_attrs(geometry))


def _native_affine_act_unfused(geometry, act, x, taps, scale, bias):
  y = _native_conv(geometry, x, taps) * scale + bias
  return get_act(act)(y) if act in NATIVE_ACTS else y


def _native_affine_act_fwd(geometry, act, x, taps, scale, bias):
  return _native_affine_act(geometry, act, x, taps, scale, bias), (x, taps, scale, bias)


def _native_affine_act_bwd(geometry, act, residuals, g):
  _, vjp = jax.vjp(functools.partial(_native_affine_act_unfused, geometry, act), *residuals)
  return vjp(g)


_native_affine_act.defvjp(_native_affine_act_fwd, _native_affine_act_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _native_act_affine_act(geometry, acts, x, taps, scale, bias, in_scale, in_bias):
  out = jax.ShapeDtypeStruct(_native_out_shape(geometry, x), x.dtype)
  act_in, act = acts
  return jax.ffi.ffi_call('sepnets_dw_act_conv_bias_act', out, vmap_method='sequential')(
      x, taps * scale, bias, in_scale, in_bias, act=np.int64(NATIVE_ACTS.get(act, 0)),
      act_in=np.int64(NATIVE_ACTS[act_in]), **_ffi_attrs(geometry))


def _native_act_affine_act_unfused(geometry, acts, x, taps, scale, bias, in_scale, in_bias):
  x = affine_act(x, in_scale, in_bias, acts[0])
  return _native_affine_act_unfused(geometry, acts[1], x, taps, scale, bias)


def _native_act_affine_act_fwd(geometry, acts, *args):
  return _native_act_affine_act(geometry, acts, *args), args


def _native_act_affine_act_bwd(geometry, acts, residuals, g):
  _, vjp = jax.vjp(functools.partial(_native_act_affine_act_unfused, geometry, acts), *residuals)
  return vjp(g)


_native_act_affine_act.defvjp(_native_act_affine_act_fwd, _native_act_affine_act_bwd)

auto = platform_auto(
    lambda: {platform: STRATEGIES[auto_choice(platform)] for platform in AUTO_CHOICE}, grouped,
    'The measured-fastest strategy for the platform being lowered for (AUTO_CHOICE).')

STRATEGIES: dict[str, ConvFn] = {'grouped': grouped, 'shift': shift, 'native': native,
                                 'auto': auto}


def get_strategy(name: str) -> ConvFn:
  """Strategy function by name; unknown names raise listing the valid ones."""
  return lookup(STRATEGIES, name, 'depthwise strategy')
