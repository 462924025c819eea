"""Post-training calibration: activation ranges from a few batches.

Pass 1 records each layer input's min and max. For 'percentile' and 'mse' a second pass builds
a 2048-bin histogram over that range, from which the clipping range is chosen: the given
percentile of the values (both tails), or the range whose quantization error over the histogram
is smallest (search over clipped ranges, the error of a value being its distance to the grid).
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets.quant.layers import HIST_BINS, forward, quant_layers, set_mode

METHODS = ('minmax', 'percentile', 'mse')


def _reset(model: nnx.Module) -> None:
  for layer in quant_layers(model):
    layer.amin[...] = jnp.array(jnp.inf, jnp.float32)
    layer.amax[...] = jnp.array(-jnp.inf, jnp.float32)
    layer.hist[...] = jnp.zeros(HIST_BINS, jnp.float32)


def _percentile_range(hist: np.ndarray, lo: float, hi: float,
                      percentile: float) -> tuple[float, float]:
  edges = np.linspace(lo, hi, HIST_BINS + 1)
  cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
  tail = (100.0 - percentile) / 100.0
  first = int(np.searchsorted(cdf, tail, side='left'))
  last = int(np.searchsorted(cdf, 1.0 - tail, side='left'))
  return float(edges[first]) if lo < 0 else lo, float(edges[min(last + 1, HIST_BINS)])


def _quant_error(values: np.ndarray, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 bits: int) -> np.ndarray:
  """Sum of counts * (v - fake_quant(v))^2 for each candidate range [lo_i, hi_i] (the grid of
  `act_grid`, vectorized over candidates)."""
  qmin, qmax = 0, 2 ** bits - 1
  lo, hi = np.minimum(lo, 0.0)[:, None], np.maximum(hi, 0.0)[:, None]
  scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0)
  zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax)
  q = np.clip(np.round(values[None] / scale) + zero_point, qmin, qmax)
  return np.sum(counts[None] * (values[None] - (q - zero_point) * scale) ** 2, axis=1)


def _mse_range(hist: np.ndarray, lo: float, hi: float, bits: int) -> tuple[float, float]:
  centres = lo + (np.arange(HIST_BINS) + 0.5) * (hi - lo) / HIST_BINS
  keep = hist > 0
  values, counts = centres[keep], hist[keep]
  steps = np.linspace(1 / 32, 1.0, 32)
  los = [lo * s for s in steps] if lo < 0 else [lo]
  candidates = np.array([(a, hi * s) for a in los for s in steps])
  errors = _quant_error(values, counts, candidates[:, 0], candidates[:, 1], bits)
  a, b = candidates[int(np.argmin(errors))]
  return float(a), float(b)


def calibrate(model: nnx.Module, batches: Iterable[jax.Array | np.ndarray], *,
              method: str = 'minmax', percentile: float = 99.99, act_bits: int = 8) -> int:
  """Sets every quantized layer's input range from `batches` (images, NHWC) and leaves the
  model in 'quant' mode; returns the number of batches seen. The model must be in eval mode
  (BatchNorm running statistics). `batches` is iterated twice for 'percentile' and 'mse'."""
  if method not in METHODS:
    raise ValueError(f'unknown calibration method {method!r}; expected one of '
                     f'{", ".join(METHODS)}')
  if not 0 < percentile <= 100:
    raise ValueError(f'percentile must be in (0, 100], got {percentile}')
  batches = list(batches)
  if not batches:
    raise ValueError('calibration needs at least one batch of data; got none')
  _reset(model)
  passes = (1,) if method == 'minmax' else (1, 2)
  for calib_pass in passes:
    set_mode(model, 'calibrate', calib_pass=calib_pass)
    for images in batches:
      forward(model, jnp.asarray(images))
  for layer in quant_layers(model):
    lo, hi = float(layer.amin[...]), float(layer.amax[...])
    if not (np.isfinite(lo) and np.isfinite(hi)):
      raise ValueError(f'layer {layer.path} saw no finite activations during calibration')
    if method == 'percentile':
      lo, hi = _percentile_range(np.asarray(layer.hist[...]), lo, hi, percentile)
    elif method == 'mse':
      lo, hi = _mse_range(np.asarray(layer.hist[...]), lo, hi,
                          layer.quant.act_bits or act_bits)
    layer.lo[...] = jnp.array(lo, jnp.float32)
    layer.hi[...] = jnp.array(hi, jnp.float32)
  set_mode(model, 'quant')
  return len(batches)
