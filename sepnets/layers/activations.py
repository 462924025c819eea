"""Activation functions by name: the names configs and specs use."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def relu6(x: jax.Array) -> jax.Array:
  return jnp.minimum(jnp.maximum(x, 0), 6)


def hard_sigmoid(x: jax.Array) -> jax.Array:
  """relu6(x + 3) / 6, as in MobileNetV3 (https://arxiv.org/abs/1905.02244)."""
  return relu6(x + 3) / 6


def hard_swish(x: jax.Array) -> jax.Array:
  """x * relu6(x + 3) / 6 (MobileNetV3)."""
  return x * hard_sigmoid(x)


def identity(x: jax.Array) -> jax.Array:
  return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': jax.nn.relu,
    'relu6': relu6,
    'hard_swish': hard_swish,
    'swish': jax.nn.silu,
    'sigmoid': jax.nn.sigmoid,
    'hard_sigmoid': hard_sigmoid,
    'gelu': jax.nn.gelu,
    'identity': identity,
}


def get_act(name: str | None) -> Callable[[jax.Array], jax.Array]:
  """Activation by name; None means identity. Unknown names raise listing the valid ones."""
  if name is None:
    return identity
  try:
    return ACTIVATIONS[name]
  except (KeyError, TypeError):
    raise ValueError(f'unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}') from None
