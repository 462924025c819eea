"""What every block shares: layer options and the residual connection with drop path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """Settings every conv and norm of a network shares."""
  padding: str = 'symmetric'
  strategy: str = 'auto'
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  def conv_kwargs(self) -> dict:
    """Keyword arguments for ConvNormAct."""
    return dict(padding=self.padding, strategy=self.strategy, bn_eps=self.bn_eps,
                bn_momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype)

  def dtype_kwargs(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)


def drop_path(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout | None:
  """Stochastic depth: drops a sample's whole residual branch (dropout over N only)."""
  return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), rngs=rngs) if rate > 0 else None


def add_residual(x: jax.Array, shortcut: jax.Array, dropper: nnx.Dropout | None) -> jax.Array:
  if dropper is not None:
    x = dropper(x)
  return x + shortcut
