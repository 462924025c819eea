"""Integer grids and fake quantization with the numerics deployment uses.

Weights: symmetric, zero point 0, grid [-(2^(b-1) - 1), 2^(b-1) - 1] (TFLite's int8 spec:
-128 is never used), scale = absmax / (2^(b-1) - 1), per tensor or per output channel.
Activations: asymmetric, per tensor, from a calibrated range [lo, hi] widened to contain 0 and
nudged so that 0 is exactly representable (a zero point on the grid), uint8 [0, 255] or int8
[-128, 127] at 8 bits (the two grids give identical dequantized values).

Fake quantization rounds to the grid and back in floating point. Gradients are straight-through
inside the clipping range and zero outside it (Jacob et al. 2018, https://arxiv.org/abs/1712.05877;
Krishnamoorthi 2018, https://arxiv.org/abs/1806.08342).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

MIN_BITS, MAX_BITS = 4, 8  # the sweep range; int8 is the deployed one


def check_bits(bits: int, what: str = 'bits') -> int:
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
      or not MIN_BITS <= bits <= MAX_BITS:
    raise ValueError(f'{what} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}')
  return int(bits)


def _static(bits) -> bool:
  return isinstance(bits, (int, np.integer))


def weight_qmax(bits):
  """Largest level of the symmetric weight grid: 127 at 8 bits (bits may be traced)."""
  if _static(bits):
    return 2 ** (check_bits(bits, 'weight bits') - 1) - 1
  return 2.0 ** (bits - 1) - 1


def weight_scale(w: jax.Array, bits, per_channel) -> jax.Array:
  """absmax / qmax per output channel (the last axis: HWIO kernels, (in, out) matrices) or per
  tensor; an all-zero channel gets scale 1 (its weights stay exactly 0). `per_channel` may be a
  traced bool: both are computed and one is selected."""
  absmax_tensor = jnp.max(jnp.abs(w))
  if isinstance(per_channel, bool) and not per_channel:
    absmax = absmax_tensor
  else:
    absmax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
    if not isinstance(per_channel, bool):
      absmax = jnp.where(per_channel, absmax, absmax_tensor)
  return jnp.where(absmax > 0, absmax / weight_qmax(bits), 1.0).astype(w.dtype)


def quantize_weight(w: jax.Array, bits, per_channel) -> tuple[jax.Array, jax.Array]:
  """(integer levels as w's dtype, scale): w ~= levels * scale, |levels| <= qmax."""
  scale = weight_scale(w, bits, per_channel)
  qmax = weight_qmax(bits)
  return jnp.clip(jnp.round(w / scale), -qmax, qmax), scale


def fake_quant_weight(w: jax.Array, bits, per_channel) -> jax.Array:
  """Weights rounded to their grid, with the identity gradient (absmax scaling never clips, so
  every weight is inside the range; the scale itself gets no gradient)."""
  levels, scale = quantize_weight(jax.lax.stop_gradient(w), bits, per_channel)
  dequant = levels * scale
  return w + jax.lax.stop_gradient(dequant - w)


@dataclasses.dataclass(frozen=True)
class ActGrid:
  """An asymmetric activation grid: real value = (q - zero_point) * scale, q in [qmin, qmax]."""
  scale: float
  zero_point: int
  qmin: int
  qmax: int

  @property
  def lo(self) -> float:
    return (self.qmin - self.zero_point) * self.scale

  @property
  def hi(self) -> float:
    return (self.qmax - self.zero_point) * self.scale


def act_grid(lo: float, hi: float, bits: int, signed: bool = False) -> ActGrid:
  """The grid for a calibrated range: widened to contain 0, zero point rounded onto the grid
  (TFLite's nudging), so that 0 (padding, ReLU) is represented exactly."""
  bits = check_bits(bits, 'activation bits')
  lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
  if not (np.isfinite(lo) and np.isfinite(hi)):
    raise ValueError(f'activation range [{lo}, {hi}] is not finite')
  qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
  if hi == lo:  # an all-zero tensor
    return ActGrid(1.0, 0, qmin, qmax)
  scale = (hi - lo) / (qmax - qmin)
  zero_point = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
  return ActGrid(scale, zero_point, qmin, qmax)


def act_qrange(bits, signed) -> tuple:
  """(qmin, qmax) of the activation grid; bits and signed may be traced."""
  if _static(bits) and isinstance(signed, bool):
    bits = check_bits(bits, 'activation bits')
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
  levels = 2.0 ** bits
  return jnp.where(signed, -levels / 2, 0.0), jnp.where(signed, levels / 2 - 1, levels - 1)


def fake_quant_act(x: jax.Array, lo: jax.Array, hi: jax.Array, bits,
                   signed=False) -> jax.Array:
  """x rounded to the asymmetric grid of [lo, hi] (traced values, so calibration results can
  live in model state), straight-through inside the nudged range and zero gradient outside."""
  qmin, qmax = act_qrange(bits, signed)
  lo = jnp.minimum(lo, 0.0).astype(jnp.float32)
  hi = jnp.maximum(hi, 0.0).astype(jnp.float32)
  scale = jnp.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0)
  zero_point = jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax)
  lo_n, hi_n = (qmin - zero_point) * scale, (qmax - zero_point) * scale
  xf = x.astype(jnp.float32)
  clipped = jnp.clip(xf, lo_n, hi_n)  # gradient 1 inside, 0 outside
  q = jnp.clip(jnp.round(xf / scale) + zero_point, qmin, qmax)
  dequant = (q - zero_point) * scale
  return (clipped + jax.lax.stop_gradient(dequant - clipped)).astype(x.dtype)


def sqnr_db(reference: jax.Array | np.ndarray, approx: jax.Array | np.ndarray) -> float:
  """Signal-to-quantization-noise ratio, 10 log10(sum ref^2 / sum (ref - approx)^2), in dB
  (inf when equal)."""
  ref = np.asarray(reference, np.float64)
  noise = np.sum((ref - np.asarray(approx, np.float64)) ** 2)
  signal = np.sum(ref ** 2)
  if noise == 0:
    return float('inf')
  return float(10 * np.log10(signal / noise))


def channel_range_spread(w: jax.Array | np.ndarray) -> float:
  """max / min over output channels of the per-channel absmax (last axis): how much a single
  per-tensor scale wastes on the narrowest channel. inf when a channel is all zero."""
  absmax = np.max(np.abs(np.asarray(w, np.float64)).reshape(-1, np.shape(w)[-1]), axis=0)
  return float(absmax.max() / absmax.min()) if absmax.min() > 0 else float('inf')
