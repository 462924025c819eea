"""Quantization-aware training: `sepnets train` with `quant.enabled`.

The run starts from a float run's latest checkpoint (`quant.init_from`; EMA weights when it kept
them), wraps every layer (`quant.weight_bits`, `quant.per_channel`, `quant.act_bits`), optionally
equalizes, calibrates the activation ranges, and then fine-tunes with fake quantization. BatchNorm
is folded with its running statistics in the forward pass of training too (frozen statistics;
gamma and beta still learn through the fold) and the calibrated ranges stay fixed, so the model
evaluates in eval mode exactly as it trained (Krishnamoorthi 2018, section 3.2 freezes the
statistics late in QAT; here they are frozen from the start).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from flax import nnx

from sepnets.files import atomic_write_text
from sepnets.quant.calibrate import calibrate
from sepnets.quant.equalize import equalize
from sepnets.quant.layers import LayerQuant, Rule, quantize_model, set_mode
from sepnets.quant.ptq import calibration_batches
from sepnets.train.checkpoint import Checkpoints
from sepnets.train.config import build_config
from sepnets.train.optim import make_optimizer, make_schedule
from sepnets.train.state import load_weights, make_steps


def load_float_weights(model: nnx.Module, workdir: str, *, ema: bool = True) -> dict[str, Any]:
  """Loads the latest checkpoint of the float run in `workdir` into `model` (same architecture);
  the float run's own config rebuilds the checkpoint's structure."""
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'quant.init_from {workdir!r} has no config.json: not a workdir of '
                            f'sepnets train')
  with open(config_path) as f:
    float_config = build_config(json.load(f), need_data=False)
  if float_config.quant.enabled:
    raise ValueError(f'quant.init_from {workdir!r} is itself a QAT run; start from a float run')
  steps = make_steps(model, make_optimizer(float_config, make_schedule(float_config, 1)),
                     label_smoothing=float_config.train.label_smoothing,
                     ema_decay=float_config.train.ema_decay)
  checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints'))
  try:
    if checkpoints.latest() is None:
      raise FileNotFoundError(f'quant.init_from {workdir!r} has no checkpoint; train it first')
    state, _ = checkpoints.restore(jax.jit(steps.init)())
  finally:
    checkpoints.close()
  weights = load_weights(model, state, ema=ema)
  return {'init_from': os.path.abspath(workdir), 'init_step': int(jax.device_get(state.step)),
          'init_weights': weights}


def prepare(run, *, resuming: bool = False) -> dict[str, Any]:
  """Turns `run.model` into the QAT starting point per `run.config.quant` (see the module).
  When the run resumes from its own checkpoint, which holds the weights and the calibrated
  ranges, only the structure is built: no float weights are loaded and nothing is calibrated."""
  q = run.config.quant
  record = os.path.join(run.workdir, 'quant.json')  # where the run started from
  restore = resuming and os.path.isfile(record)
  if restore:
    with open(record) as f:
      info = json.load(f)
  else:
    info = load_float_weights(run.model, q.init_from)
    if jax.process_index() == 0:
      atomic_write_text(record, json.dumps(info, indent=2) + '\n')
  quant = LayerQuant(weight_bits=q.weight_bits, per_channel=q.per_channel,
                     act_bits=q.act_bits or None)
  quantize_model(run.model, [Rule('*', quant)])
  if q.equalize:  # also switches ReLU6 to ReLU, which the checkpoint cannot carry
    info['equalized_pairs'] = len(equalize(run.model)['pairs'])
  if restore:
    set_mode(run.model, 'quant')
  else:
    calibrate(run.model, calibration_batches(run, q.calibration_batches), method=q.method)
  return info
