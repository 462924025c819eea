"""Model-level cost summaries: the zoo table and per-layer summaries (like Keras' summary)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from sepnets import costs
from sepnets.registry import create_model, get_model_def, list_models
from sepnets.tables import aligned


@dataclasses.dataclass(frozen=True)
class ModelCosts:
  name: str
  family: str
  reference: str
  image_size: int
  mode: str
  params: int
  stats: int
  macs: int
  macs_valid: int


def abstract_model(name: str, *, mode: str = 'eval', **overrides: Any) -> nnx.Module:
  """The model with abstract (shape-only) weights: nothing is allocated."""
  if mode not in ('eval', 'train'):
    raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
  model = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), **overrides))
  if mode == 'train':
    model.train()
  return model


def model_layer_costs(name: str, *, image_size: int | None = None, batch: int = 1,
                      mode: str = 'eval', **overrides: Any) -> tuple[list[costs.LayerCost], int]:
  """Per-layer costs of model `name` (default resolution unless given) and the size used."""
  size = image_size or get_model_def(name).default_image_size
  model = abstract_model(name, mode=mode, **overrides)
  dtype = jnp.dtype(overrides['dtype']) if overrides.get('dtype') else jnp.float32
  return costs.layer_costs(model, (batch, size, size, model.in_chans), dtype), size


def zoo_costs(pattern: str = '*') -> list[ModelCosts]:
  """Params, BN statistics and MACs per image of every model at its default resolution."""
  rows = []
  for name in list_models(pattern):
    layer_rows, size = model_layer_costs(name)
    t = costs.totals(layer_rows)
    model_def = get_model_def(name)
    rows.append(ModelCosts(name=name, family=model_def.family, reference=model_def.reference,
                           image_size=size, mode='eval', params=t.params, stats=t.stats,
                           macs=t.macs, macs_valid=t.macs_valid))
  return rows


def format_zoo(rows: list[ModelCosts]) -> str:
  header = ('model', 'image', 'params', 'BN stats', 'MACs', 'valid MACs', 'reference')
  body = [(r.name, str(r.image_size), f'{r.params:,}', f'{r.stats:,}', f'{r.macs:,}',
           f'{r.macs_valid:,}', r.reference) for r in rows]
  lines = aligned([header, *body], left={0, 6})
  return '\n'.join([lines[0], '-' * len(lines[0]), *lines[1:],
                    '', 'MACs per image at the default resolution, conv + linear, every tap '
                    '(valid MACs: taps inside the input, as XLA counts); eval mode.'])
