"""Optimizers and schedules from the config: decay skips BatchNorm and biases, TF RMSProp."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sepnets import create_model
from sepnets.train.config import build_config
from sepnets.train.optim import decay_mask, make_optimizer, make_schedule


def params_of(name='mobilenet_v2'):
  model = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0), num_classes=10))
  return nnx.state(model, nnx.Param)


def test_decay_mask_is_kernels_only():
  params = params_of()
  flat = {jax.tree_util.keystr(p).removesuffix('.value'): m for p, m in
          jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]}
  kernels = [k for k in flat if k.endswith("['kernel']")]
  assert kernels and all(flat[k] for k in kernels)
  others = [k for k in flat if not k.endswith("['kernel']")]
  assert any("['scale']" in k for k in others) and any("['bias']" in k for k in others)
  assert not any(flat[k] for k in others)


@pytest.mark.parametrize('name', ['sgd', 'rmsprop', 'adamw'])
def test_weight_decay_moves_kernels_but_not_batchnorm_or_biases(name):
  c = build_config({'optimizer': {'name': name, 'weight_decay': 0.1, 'learning_rate': 0.1},
                    'schedule': {'name': 'constant'}})
  params = {'conv': {'kernel': jnp.ones((3, 3, 1, 4))}, 'bn': {'scale': jnp.ones(4),
                                                               'bias': jnp.ones(4)}}
  opt = make_optimizer(c, make_schedule(c, 10))
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zero, opt.init(params), params)
  assert float(jnp.abs(updates['conv']['kernel']).min()) > 0
  assert float(jnp.abs(updates['bn']['scale']).max()) == 0
  assert float(jnp.abs(updates['bn']['bias']).max()) == 0


def test_rmsprop_is_tf_style():
  c = build_config({'optimizer': {'name': 'rmsprop', 'learning_rate': 0.01, 'momentum': 0.0,
                                  'rms_decay': 0.9, 'eps': 1e-3},
                    'schedule': {'name': 'constant'}})
  opt = make_optimizer(c, make_schedule(c, 10))
  p, g = jnp.array([1.0]), jnp.array([2.0])
  updates, _ = opt.update(g, opt.init(p), p)
  # TF: ms starts at 1, ms = 0.9 * 1 + 0.1 * g^2, update = -lr * g / sqrt(ms + eps)
  expected = -0.01 * 2.0 / np.sqrt(0.9 + 0.1 * 4.0 + 1e-3)
  np.testing.assert_allclose(updates, [expected], rtol=1e-6)


def test_warmup_then_cosine():
  c = build_config({'optimizer': {'learning_rate': 0.4},
                    'schedule': {'name': 'cosine', 'warmup_steps': 10, 'final_fraction': 0.1}})
  s = make_schedule(c, 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                             [0.0, 0.2, 0.4, 0.4 * (0.1 + 0.9 * 0.5), 0.04], rtol=1e-5, atol=1e-7)


def test_step_and_exponential():
  c = build_config({'optimizer': {'learning_rate': 1.0},
                    'schedule': {'name': 'step', 'decay_rate': 0.5, 'decay_steps': 10}})
  s = make_schedule(c, 100)
  np.testing.assert_allclose([s(9), s(10), s(25)], [1.0, 0.5, 0.25])
  c = build_config({'optimizer': {'learning_rate': 1.0},
                    'schedule': {'name': 'exponential', 'decay_rate': 0.5, 'decay_steps': 10}})
  np.testing.assert_allclose(make_schedule(c, 100)(5), 0.5 ** 0.5, rtol=1e-6)


def test_gradient_clipping():
  c = build_config({'optimizer': {'name': 'sgd', 'momentum': 0.0, 'learning_rate': 1.0},
                    'schedule': {'name': 'constant'}, 'train': {'grad_clip_norm': 1.0}})
  opt = make_optimizer(c, make_schedule(c, 10))
  p = jnp.zeros(4)
  updates, _ = opt.update(jnp.full(4, 100.0), opt.init(p), p)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)
