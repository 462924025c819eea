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


def compile_predictor(model: nnx.Module, images: Any, *,
                      compiler_options: dict[str, Any] | None = None
                      ) -> Callable[[jax.Array], jax.Array]:
  """`images -> logits` for `model` in eval mode, compiled once for `images`' shape and dtype
  (an array or a jax.ShapeDtypeStruct), for serving: the weights are held as the flat list of
  the model state's arrays, so a call hands XLA that list instead of flattening the NNX state
  (its Variables flatten in Python, call after call: a fixed cost per call that shows at
  batch 1). Later changes to `model` are not seen; compile again after them.
  """
  model.eval()
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  eval_step = make_eval_step(graphdef)

  def predict(leaves: list[jax.Array], images: jax.Array) -> jax.Array:
    return eval_step(jax.tree.unflatten(treedef, leaves), images)

  compiled = jax.jit(predict, compiler_options=compiler_options).lower(leaves, images).compile()
  return lambda x: compiled(leaves, x)

