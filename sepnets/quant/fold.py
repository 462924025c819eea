"""Folding BatchNorm into the convolution before it, as deployment does.

BN(conv(x, W) + b) = conv(x, W * g) + (beta - mean * g + b * g), g = gamma / sqrt(var + eps),
with the running statistics (inference), per output channel (the kernel's last axis). After
folding, a depthwise kernel's per-channel ranges carry the spread of g: channels whose batch
variance was tiny get scaled up by orders of magnitude — what breaks per-tensor quantization
(Krishnamoorthi 2018, https://arxiv.org/abs/1806.08342, section 3.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sepnets.layers.norm_act import batch_norm_affine


def fold_batch_norm(kernel: jax.Array, bias: jax.Array | None,
                    bn: nnx.BatchNorm) -> tuple[jax.Array, jax.Array]:
  """(kernel * g, folded bias) for a conv (HWIO kernel) or linear ((in, out)) followed by `bn`."""
  g, shift = batch_norm_affine(bn)
  folded_bias = shift if bias is None else shift + bias.astype(jnp.float32) * g
  return kernel * g.astype(kernel.dtype), folded_bias
