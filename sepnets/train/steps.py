"""Pure train and eval steps over split NNX state, so they jit, lower and shard cleanly.

State layout: `params` (nnx.Param) and `rest` (BatchNorm statistics, RNG state) from
`nnx.split(model, nnx.Param, ...)`; the optimizer is any optax GradientTransformation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype('float32'), labels).mean()


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation) -> Callable:
  """(params, rest, opt_state, images, labels) -> (params, rest, opt_state, loss).

  Forward in train mode (BatchNorm batch statistics, dropout), backward, optimizer update.
  """

  def train_step(params: Any, rest: Any, opt_state: Any, images: jax.Array, labels: jax.Array):
    def loss_fn(params, rest):
      model = nnx.merge(graphdef, params, rest, copy=True)
      loss = cross_entropy(model(images), labels)
      return loss, nnx.state(model, nnx.Not(nnx.Param))

    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_rest, opt_state, loss

  return train_step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
  """(state, images) -> logits, for a model split in eval mode."""

  def eval_step(state: Any, images: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(images)

  return eval_step
