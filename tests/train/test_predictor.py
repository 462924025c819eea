"""compile_predictor: eval-mode inference compiled once, its weights held as a flat list."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.registry import create_model
from sepnets.train.steps import compile_predictor, make_eval_step


def test_predictor_equals_the_eval_step_and_ignores_later_changes():
  model = create_model('mobilenet_v2', num_classes=10, width=0.25, rngs=nnx.Rngs(0))
  model.train()  # the predictor puts the model in eval mode itself
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  predict = compile_predictor(model, jax.ShapeDtypeStruct(x.shape, x.dtype))
  graphdef, state = nnx.split(model)
  want = jax.jit(make_eval_step(graphdef))(state, x)
  np.testing.assert_array_equal(predict(x), want)
  # the weights were taken at compile time: a later change to the model is not seen
  model.classifier.bias[...] = model.classifier.bias[...] + 1.0
  np.testing.assert_array_equal(predict(x), want)
  with pytest.raises(TypeError):  # compiled for one shape
    predict(x[:1])
