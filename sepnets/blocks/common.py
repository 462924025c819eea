"""What every block shares: layer options and the residual connection with drop path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.builder import ResolvedBlock
from sepnets.layers import SqueezeExcite


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


def drop_path(block: ResolvedBlock, *, rngs: nnx.Rngs) -> nnx.Dropout | None:
  """Stochastic depth on the block's residual branch (dropout of whole samples), if any."""
  if not block.has_skip or block.drop_path_rate <= 0:
    return None
  return nnx.Dropout(block.drop_path_rate, broadcast_dims=(1, 2, 3), rngs=rngs)


def squeeze_excite(block: ResolvedBlock, channels: int, *, opts: LayerOptions, gate: str,
                   act: str | None, rngs: nnx.Rngs) -> SqueezeExcite | None:
  """The block's squeeze-excite on `channels` (None when the spec has none)."""
  if not block.se_chs:
    return None
  return SqueezeExcite(channels, block.se_chs, act=act or block.act, gate=gate, rngs=rngs,
                       **opts.dtype_kwargs())


def add_residual(x: jax.Array, shortcut: jax.Array, dropper: nnx.Dropout | None) -> jax.Array:
  if dropper is not None:
    x = dropper(x)
  return x + shortcut
