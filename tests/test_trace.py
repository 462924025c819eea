"""Layer recording sees sepnets' own BatchNorm (an nnx.BatchNorm subclass) exactly once."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sepnets.layers.norm_act import ConvNormAct
from sepnets.trace import layer_scopes, tag_layer_scopes, trace_layers


@pytest.mark.parametrize('train', [True, False])
def test_every_layer_recorded_once_in_either_mode(train):
  layer = ConvNormAct(4, 8, 3, rngs=nnx.Rngs(0))
  layer.train() if train else layer.eval()  # eval: our BatchNorm defers to nnx's __call__
  calls = trace_layers(layer, (1, 8, 8, 4))
  assert [c.path for c in calls] == ['conv', 'bn']


@pytest.mark.parametrize('train', [True, False])
def test_layer_scope_is_not_nested_in_itself(train):
  layer = tag_layer_scopes(ConvNormAct(4, 8, 3, rngs=nnx.Rngs(0)))
  layer.train() if train else layer.eval()
  graph, state = nnx.split(layer)

  def forward(state, x):
    with layer_scopes():
      return nnx.merge(graph, state)(x)

  text = jax.jit(forward).lower(state, jnp.ones((1, 8, 8, 4))).as_text(debug_info=True)
  assert 'bn/' in text
  assert 'bn/bn' not in text
