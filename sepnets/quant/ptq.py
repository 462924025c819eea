"""Post-training quantization of a trained run: load, quantize, calibrate, evaluate.

The model and data come from the run's own config and workdir (`sepnets train` output), so the
quantized model sees exactly the evaluation pipeline the float one was measured with.
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
from sepnets.quant.equalize import equalize
from sepnets.quant.layers import Rule, forward, quantize_model, set_mode
from sepnets.train.loop import Run, augmentation, open_checkpoint
from sepnets.train.state import load_weights
from sepnets.train.pipeline import Pipeline


def calibration_batches(run: Run, count: int) -> list[np.ndarray]:
  """The first `count` training batches of `run` under the evaluation transform (no
  augmentation): what calibration sees."""
  if count < 1:
    raise ValueError(f'calibration needs at least one batch; got {count}')
  c = run.config
  pipeline = Pipeline(run.dataset.train, augmentation(c, False),
                      batch_size=c.train.eval_batch_size, seed=c.seed, train=False)
  try:
    return [pipeline.batch(i).images for i in range(min(count, pipeline.steps_per_epoch))]
  finally:
    pipeline.close()


@dataclasses.dataclass
class Trained:
  """A trained run's model (eval mode, weights loaded) with its data pipelines."""
  run: Run
  model: nnx.Module
  step: int
  weights: str  # 'ema' or 'plain'

  def calibration_batches(self, count: int) -> list[np.ndarray]:
    return calibration_batches(self.run, count)

  def eval_batches(self, limit: int | None = None):
    """(images, labels, mask) of the evaluation set, at most `limit` examples."""
    seen = 0
    with self.run.eval_data.iterate(prefetch=self.run.config.data.prefetch) as batches:
      for batch in batches:
        if limit is not None and seen >= limit:
          break
        mask = np.asarray(batch.mask).copy()
        if limit is not None:  # exactly `limit` examples: mask the overflow
          mask[np.cumsum(mask > 0) > limit - seen] = 0
        yield batch.images, batch.labels, mask
        seen += int((mask > 0).sum())

  def logits(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) over the evaluation set (padding rows dropped)."""
    out, labels = [], []
    for images, y, mask in self.eval_batches(limit):
      keep = mask > 0
      out.append(np.asarray(forward(self.model, jnp.asarray(images)))[keep])
      labels.append(np.asarray(y)[keep])
    return np.concatenate(out), np.concatenate(labels)

  def close(self) -> None:
    self.run.close()


def load_trained(config, workdir: str, *, step: int | None = None,
                 ema: bool = True) -> Trained:
  """The model of `workdir`'s latest (or given) checkpoint; EMA weights when the run kept them
  and `ema`."""
  run, state = open_checkpoint(config, workdir, step)
  weights = load_weights(run.model, state, ema=ema)
  return Trained(run, run.model, int(jax.device_get(state.step)), weights)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, -1) == labels))


def ptq(trained: Trained, rules: Sequence[Rule], *, calibration_batches: int = 8,
        method: str = 'minmax', percentile: float = 99.99,
        equalize_first: bool = False) -> dict[str, Any]:
  """Quantizes `trained.model` in place per `rules` (after cross-layer equalization when
  `equalize_first`), calibrates, and returns the quantized accuracy next to the float one (and
  the float accuracy of the equalized model: ReLU6 becomes ReLU there)."""
  float_logits, labels = trained.logits()
  quantize_model(trained.model, rules)
  result = {'float_accuracy': accuracy(float_logits, labels)}
  if equalize_first:
    info = equalize(trained.model)
    set_mode(trained.model, 'float')
    result['equalized_float_accuracy'] = accuracy(trained.logits()[0], labels)
    result['equalized_pairs'] = len(info['pairs'])
  calibrate(trained.model, trained.calibration_batches(calibration_batches), method=method,
            percentile=percentile)
  quant_logits, _ = trained.logits()
  return {**result, 'quant_accuracy': accuracy(quant_logits, labels),
          'examples': int(labels.size)}
