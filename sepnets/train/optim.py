"""Optimizers and learning-rate schedules from a config (optax).

- SGD with momentum / Nesterov and RMSProp add L2 weight decay to the gradient; AdamW decays
  decoupled. Either way only kernels decay: BatchNorm scales/biases and all biases (ndim <= 1)
  are skipped, as in timm and the MobileNet / EfficientNet recipes.
- RMSProp is TF-style, as the MobileNet papers trained: the square average starts at 1 and eps
  sits inside the square root.
- Warmup is linear from 0 to the peak, then cosine / step / exponential / constant.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def decay_mask(params: Any) -> Any:
  """True for leaves that take weight decay: kernels (ndim > 1), not BatchNorm or biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(config, total_steps: int) -> optax.Schedule:
  s, peak = config.schedule, config.optimizer.learning_rate
  warmup = min(s.warmup_steps, total_steps)
  rest = max(total_steps - warmup, 1)
  if s.name == 'cosine':
    after = optax.cosine_decay_schedule(peak, rest, alpha=s.final_fraction)
  elif s.name == 'step':
    after = optax.exponential_decay(peak, s.decay_steps, s.decay_rate, staircase=True)
  elif s.name == 'exponential':
    after = optax.exponential_decay(peak, s.decay_steps, s.decay_rate)
  else:
    after = optax.constant_schedule(peak)
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  o = config.optimizer
  parts = []
  if config.train.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.train.grad_clip_norm))
  if o.name == 'adamw':
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts)
  if o.weight_decay:
    parts.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
  if o.name == 'sgd':
    parts.append(optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  else:
    parts.append(optax.rmsprop(schedule, decay=o.rms_decay, eps=o.eps, initial_scale=1.0,
                               eps_in_sqrt=True, momentum=o.momentum or None,
                               nesterov=o.nesterov))
  return optax.chain(*parts)
