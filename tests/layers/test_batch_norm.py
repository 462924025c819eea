"""sepnets' BatchNorm (folded training-mode normalization) equals nnx.BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.layers.norm_act import BatchNorm, batch_norm
from tests.conftest import rel_err


def _pair(channels, dtype=None):
  ours = batch_norm(channels, dtype=dtype, rngs=nnx.Rngs(0))
  ref = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)  # the same non-trivial parameters and statistics for both
  values = {'scale': rng.uniform(0.5, 2, channels), 'bias': rng.standard_normal(channels),
            'mean': rng.standard_normal(channels), 'var': rng.uniform(0.5, 2, channels)}
  for layer in (ours, ref):
    for name, value in values.items():
      getattr(layer, name)[...] = jnp.asarray(value, jnp.float32)
  return ours, ref


def _run(layer, x, ct):
  layer.train()
  graph, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(params, x):
    model = nnx.merge(graph, params, rest, copy=True)
    y = model(x)
    return jnp.sum(y.astype(jnp.float32) * ct), (y, nnx.state(model, nnx.BatchStat))

  (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
  return y, grads, stats


@pytest.mark.parametrize('dtype', [None, jnp.bfloat16])
def test_training_mode_matches_nnx(dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 5, 6, 8)) * 3 + 2, dtype or jnp.float32)
  ct = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  ours, ref = _pair(8, dtype)
  assert isinstance(ours, BatchNorm) and isinstance(ours, nnx.BatchNorm)
  y, (gp, gx), stats = _run(ours, x, ct)
  ry, (rgp, rgx), rstats = _run(ref, x, ct)
  tol = 1e-5 if dtype is None else 1e-2
  assert y.dtype == ry.dtype
  assert rel_err(y.astype(jnp.float32), ry.astype(jnp.float32)) <= tol
  assert rel_err(gx.astype(jnp.float32), rgx.astype(jnp.float32)) <= tol
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(rgp)):
    assert rel_err(a, b) <= tol
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(rstats)):
    assert rel_err(a, b) <= 1e-6


def test_comparison_can_fail():
  """A BatchNorm with another epsilon is told apart by the same check."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 5, 6, 8)) * 0.01, jnp.float32)
  ct = jnp.ones(x.shape, jnp.float32)
  ours, _ = _pair(8)
  other = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-3, rngs=nnx.Rngs(0))
  y, _, _ = _run(ours, x, ct)
  ry, _, _ = _run(other, x, ct)
  assert rel_err(y, ry) > 1e-3


def test_eval_mode_is_nnx():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 3, 3, 8)), jnp.float32)
  ours, ref = _pair(8)
  ours.eval(), ref.eval()
  np.testing.assert_array_equal(ours(x), ref(x))
