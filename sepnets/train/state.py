"""The training state and the loop's jitted steps.

`TrainState` is one pytree: step, params, batch statistics, the rest of the model state (the
dropout RNG streams), optimizer state, EMA weights and on-device metric accumulators, so that a
checkpoint of it resumes a run exactly. The model's graph definitions (train and eval mode) stay
outside, in `Steps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array
  params: Any
  stats: Any  # nnx.BatchStat
  other: Any  # everything else: RNG keys and counts
  opt_state: Any
  ema: Any  # {'params', 'stats'}, or None without EMA
  metrics: dict[str, jax.Array]  # sums since the last log; first_bad = first non-finite step


def load_weights(model: nnx.Module, state: TrainState, *, ema: bool = True) -> str:
  """Puts the state's EMA weights (when kept and `ema`) or plain weights and BatchNorm
  statistics into `model`, in eval mode; returns 'ema' or 'plain'."""
  use_ema = ema and state.ema is not None
  params = state.ema['params'] if use_ema else state.params
  stats = state.ema['stats'] if use_ema else state.stats
  nnx.update(model, jax.device_get(params), jax.device_get(stats))
  model.eval()
  return 'ema' if use_ema else 'plain'


def empty_metrics() -> dict[str, jax.Array]:
  return {'loss': jnp.zeros((), jnp.float32), 'correct': jnp.zeros((), jnp.float32),
          'count': jnp.zeros((), jnp.float32), 'first_bad': jnp.full((), -1, jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Steps:
  """Pure step functions over TrainState (to be jitted with shardings by the loop)."""
  init: Callable[[], TrainState]
  train: Callable[[TrainState, jax.Array, jax.Array], TrainState]
  evaluate: Callable[[Any, Any, Any, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Per-example cross entropy against one-hot labels smoothed towards uniform."""
  logits = logits.astype(jnp.float32)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def make_steps(model: nnx.Module, optimizer: optax.GradientTransformation, *,
               label_smoothing: float = 0.0, ema_decay: float = 0.0) -> Steps:
  """Splits `model` into train- and eval-mode graphs and builds the steps."""
  model.train()
  train_graph, params, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  model.eval()
  eval_graph = nnx.graphdef(model)

  def init() -> TrainState:
    ema = {'params': params, 'stats': stats} if ema_decay else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, stats=stats, other=other,
                      opt_state=optimizer.init(params), ema=ema, metrics=empty_metrics())

  def train(state: TrainState, images: jax.Array, labels: jax.Array) -> TrainState:

    def loss_fn(params):
      net = nnx.merge(train_graph, params, state.stats, state.other, copy=True)
      logits = net(images)
      loss = smoothed_cross_entropy(logits, labels, label_smoothing).mean()
      _, _, new_stats, new_other = nnx.split(net, nnx.Param, nnx.BatchStat, ...)
      return loss, (logits, new_stats, new_other)

    (loss, (logits, stats, other)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:  # TF's warmup: the average forgets its random start early on
      decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
      ema = jax.tree.map(lambda e, x: (decay * e + (1 - decay) * x).astype(e.dtype), ema,
                         {'params': params, 'stats': stats})
    m = state.metrics
    bad = ~jnp.isfinite(loss)
    metrics = {
        'loss': m['loss'] + loss * labels.shape[0],
        'correct': m['correct'] + jnp.sum(jnp.argmax(logits, -1) == labels),
        'count': m['count'] + labels.shape[0],
        'first_bad': jnp.where(bad & (m['first_bad'] < 0), state.step, m['first_bad']),
    }
    return TrainState(step=state.step + 1, params=params, stats=stats, other=other,
                      opt_state=opt_state, ema=ema, metrics=metrics)

  def evaluate(params, stats, other, images, labels, mask) -> dict[str, jax.Array]:
    net = nnx.merge(eval_graph, params, stats, other, copy=True)
    logits = net(images)
    loss = smoothed_cross_entropy(logits, labels, 0.0)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return Steps(init=init, train=train, evaluate=evaluate)
