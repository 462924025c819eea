"""`sepnets quantize ...` as library functions over a trained run's config and workdir."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sepnets.files import atomic_write_text
from sepnets.quant import report
from sepnets.quant.layers import LayerQuant, Rule
from sepnets.quant.ptq import load_trained, ptq
from sepnets.quant.sensitivity import analyze


def sensitivity(config, workdir: str, *, bits: Sequence[int] = (8, 4),
                calibration_batches: int = 4, eval_examples: int = 2000,
                method: str = 'minmax', ema: bool = True, out: str | None = None
                ) -> dict[str, Any]:
  """Per-layer sensitivity of the trained model in `workdir`; writes the report to `out`
  (default WORKDIR/quant) and returns the result with the report's paths."""
  if eval_examples < 1:
    raise ValueError(f'eval_examples must be positive, got {eval_examples}')
  trained = load_trained(config, workdir, ema=ema)
  try:
    calibration = trained.calibration_batches(calibration_batches)
    images, labels = [], []
    for batch_images, batch_labels, mask in trained.eval_batches(eval_examples):
      keep = mask > 0
      images.append(batch_images[keep])
      labels.append(batch_labels[keep])
    result = analyze(trained.model, calibration, images, np.concatenate(labels), bits=bits,
                     method=method)
  finally:
    trained.close()
  result.update(model=config.model.name, dataset=config.data.name, step=trained.step,
                weights=trained.weights, calibration_batches=len(calibration), method=method)
  title = f'{config.model.name} on {config.data.name}: INT8 sensitivity per layer'
  result['files'] = report.write(result, out or os.path.join(workdir, 'quant'), title)
  return result


def run_ptq(config, workdir: str, *, weight_bits: int = 8, per_channel: bool = True,
            act_bits: int | None = 8, calibration_batches: int = 8, method: str = 'minmax',
            equalize: bool = False, ema: bool = True, out: str | None = None) -> dict[str, Any]:
  """PTQ of every layer with one setting; writes WORKDIR/quant/ptq-<setting>.json."""
  quant = LayerQuant(weight_bits=weight_bits, per_channel=per_channel, act_bits=act_bits)
  trained = load_trained(config, workdir, ema=ema)
  try:
    result = ptq(trained, [Rule('*', quant)], calibration_batches=calibration_batches,
                 method=method, equalize_first=equalize)
  finally:
    trained.close()
  name = (f"w{weight_bits}{'c' if per_channel else 't'}"
          f"{f'a{act_bits}' if act_bits else ''}-{method}{'-cle' if equalize else ''}")
  result.update(model=config.model.name, dataset=config.data.name, step=trained.step,
                weights=trained.weights, setting=name)
  path = os.path.join(out or os.path.join(workdir, 'quant'), f'ptq-{name}.json')
  atomic_write_text(path, json.dumps(result, indent=2) + '\n')
  result['file'] = path
  return result
