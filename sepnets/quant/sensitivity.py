"""Per-layer quantization sensitivity: which layers break first, measured.

Every conv and linear layer is quantized alone (the rest float), then all together, per tensor
and per output channel, at each bit width asked for (weights at that width, the layer's input
activation at 8 bits, the deployed setting). For each layer and setting: the SQNR of the
network's logits against the float model, and the accuracy change. Per layer also: its type and
the spread of its BatchNorm-folded per-channel weight ranges (max / min absmax).

The calibration runs once, on the float model, so every setting shares the same activation
ranges and one compiled forward pass serves them all (the settings are model state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets.quant.calibrate import calibrate
from sepnets.quant.layers import FLOAT, KINDS, LayerQuant, Rule, forward, quantize_model
from sepnets.quant.numerics import channel_range_spread, check_bits, sqnr_db


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str  # e.g. 'w8 per-tensor'
  quant: LayerQuant


def settings(bits: Sequence[int] = (8, 4)) -> list[Setting]:
  out = []
  for b in bits:
    check_bits(b, 'bits')
    out += [Setting(f'w{b} per-tensor', LayerQuant(weight_bits=b, per_channel=False, act_bits=8)),
            Setting(f'w{b} per-channel', LayerQuant(weight_bits=b, per_channel=True, act_bits=8))]
  return out


def _predict(model, batches: Sequence[np.ndarray]) -> np.ndarray:
  return np.concatenate([np.asarray(forward(model, jnp.asarray(b))) for b in batches])


def analyze(model: nnx.Module, calibration: Sequence[np.ndarray], images: Sequence[np.ndarray],
            labels: np.ndarray, *, bits: Sequence[int] = (8, 4),
            method: str = 'minmax') -> dict[str, Any]:
  """Sensitivity of `model` (float, eval mode; quantized in place and left all-float).

  Args:
    calibration: image batches for the activation ranges.
    images: evaluation image batches; labels: their labels, concatenated.
  """
  grid = settings(bits)
  reference = _predict(model, images)
  labels = np.asarray(labels)
  if len(labels) != len(reference):
    raise ValueError(f'{len(labels)} labels for {len(reference)} evaluation images')
  float_acc = float(np.mean(np.argmax(reference, -1) == labels))
  layers = quantize_model(model, [Rule('*', FLOAT)])
  calibrate(model, calibration, method=method)  # leaves 'quant' mode, every layer float

  def measure() -> dict[str, float]:
    out = _predict(model, images)
    return {'sqnr_db': sqnr_db(reference, out),
            'accuracy': float(np.mean(np.argmax(out, -1) == labels))}

  rows = []
  for layer in layers:
    kernel, _ = layer.folded()
    row = {'layer': layer.path, 'type': layer.kind, 'index': layer.index,
           'range_spread': channel_range_spread(kernel), 'settings': {}}
    for setting in grid:
      layer.quant = setting.quant
      row['settings'][setting.name] = measure()
    layer.quant = FLOAT
    rows.append(row)
  together = {}
  for setting in grid:
    for layer in layers:
      layer.quant = setting.quant
    together[setting.name] = measure()
  for layer in layers:
    layer.quant = FLOAT
  return {'float_accuracy': float_acc, 'examples': int(len(labels)),
          'settings': [s.name for s in grid], 'layers': rows, 'all_layers': together,
          'summary': summarize(rows, [s.name for s in grid], float_accuracy=float_acc)}


def summarize(rows: list[dict[str, Any]], names: Sequence[str], worst: int = 10,
              float_accuracy: float | None = None, breaking: float = 0.01) -> dict[str, Any]:
  """Per type: layer count, median SQNR and median range spread. Per setting: the `worst`
  lowest-SQNR layers; the layers that alone cost more than `breaking` accuracy; the mean SQNR
  rank (0 = worst) of depthwise and of other layers; and the verdict: depthwise layers degrade
  first when the first layer to break (lowest SQNR) is depthwise."""
  kinds = [k for k in KINDS if any(r['type'] == k for r in rows)]
  per_type = {k: {'layers': sum(r['type'] == k for r in rows),
                  'median_range_spread': float(np.median([r['range_spread'] for r in rows
                                                          if r['type'] == k])),
                  'median_sqnr_db': {n: float(np.median([r['settings'][n]['sqnr_db']
                                                         for r in rows if r['type'] == k]))
                                     for n in names}} for k in kinds}
  first = {}
  for n in names:
    ranked = sorted(rows, key=lambda r: r['settings'][n]['sqnr_db'])
    ranks = {r['layer']: i for i, r in enumerate(ranked)}
    dw = [ranks[r['layer']] for r in rows if r['type'] == 'depthwise']
    other = [ranks[r['layer']] for r in rows if r['type'] != 'depthwise']
    broken = ([r for r in ranked if float_accuracy - r['settings'][n]['accuracy'] > breaking]
              if float_accuracy is not None else [])
    first[n] = {'worst_layers': [r['layer'] for r in ranked[:worst]],
                'worst_types': [r['type'] for r in ranked[:worst]],
                'breaking_layers': [(r['layer'], r['type'],
                                     r['settings'][n]['accuracy'] - float_accuracy)
                                    for r in broken],
                'depthwise_mean_rank': float(np.mean(dw)) if dw else float('nan'),
                'other_mean_rank': float(np.mean(other)) if other else float('nan'),
                'depthwise_degrades_first': bool(ranked and ranked[0]['type'] == 'depthwise')}
  return {'per_type': per_type, 'first_to_break': first}
