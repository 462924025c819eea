"""sepnets' BatchNorm (folded training-mode normalization, native one-pass sums on CPU) equals
nnx.BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.layers import ConvNormAct
from sepnets.layers.batch_stats import channel_sums
from sepnets.layers.norm_act import BatchNorm, batch_norm
from tests.conftest import rel_err


def _pair(channels, dtype=None, reductions='auto'):
  ours = batch_norm(channels, dtype=dtype, reductions=reductions, rngs=nnx.Rngs(0))
  ref = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)  # the same non-trivial parameters and statistics for both
  values = {'scale': rng.uniform(0.5, 2, channels), 'bias': rng.standard_normal(channels),
            'mean': rng.standard_normal(channels), 'var': rng.uniform(0.5, 2, channels)}
  for layer in (ours, ref):
    for name, value in values.items():
      getattr(layer, name)[...] = jnp.asarray(value, jnp.float32)
  return ours, ref


def _run(layer, x, ct, hlo=None):
  layer.train()
  graph, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(params, x):
    model = nnx.merge(graph, params, rest, copy=True)
    y = model(x)
    return jnp.sum(y.astype(jnp.float32) * ct), (y, nnx.state(model, nnx.BatchStat))

  step = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
  if hlo is not None:
    hlo.append(step.lower(params, x).as_text())
  (_, (y, stats)), grads = step(params, x)
  return y, grads, stats


@pytest.mark.parametrize('reductions', ['auto', 'xla'])
@pytest.mark.parametrize('dtype,shape', [(None, (4, 5, 6, 8)), (None, (3, 5, 7, 21)),
                                         (jnp.bfloat16, (4, 5, 6, 8))])
def test_training_mode_matches_nnx(dtype, shape, reductions):
  """Channel counts with and without a tail past whole vectors, a position count that is not
  a multiple of four; float32 with `reductions='auto'` runs the native sums (on this CPU),
  forward and backward, and nothing else does."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 2, dtype or jnp.float32)
  ct = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  ours, ref = _pair(shape[-1], dtype, reductions)
  hlo = []
  y, (gp, gx), stats = _run(ours, x, ct, hlo)
  native = dtype is None and reductions == 'auto'
  assert hlo[0].count('sepnets_channel_sums') == (2 if native else 0)
  ref_hlo = []
  ry, (rgp, rgx), rstats = _run(ref, x, ct, ref_hlo)
  assert 'sepnets_channel_sums' not in ref_hlo[0]
  assert isinstance(ours, BatchNorm) and isinstance(ours, nnx.BatchNorm)
  tol = 1e-5 if dtype is None else 1e-2
  assert y.dtype == ry.dtype
  assert rel_err(y.astype(jnp.float32), ry.astype(jnp.float32)) <= tol
  assert rel_err(gx.astype(jnp.float32), rgx.astype(jnp.float32)) <= tol
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(rgp)):
    assert rel_err(a, b) <= tol
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(rstats)):
    assert rel_err(a, b) <= 1e-6


@pytest.mark.parametrize('shape', [(70001, 24), (3, 200, 40), (5, 1)])
def test_channel_sums_match_float64(shape):
  """Many chunks and float32 blocks (70001 positions), tails of channels and of positions."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal(shape).astype(np.float32) + 1
  b = rng.standard_normal(shape).astype(np.float32)
  a64, b64 = a.astype(np.float64).reshape(-1, shape[-1]), b.astype(np.float64).reshape(-1, shape[-1])
  total, squares = jax.jit(channel_sums)(a)
  g_total, g_x = jax.jit(channel_sums)(b, a)
  for got, want in ((total, a64.sum(0)), (squares, (a64 * a64).sum(0)), (g_total, b64.sum(0)),
                    (g_x, (b64 * a64).sum(0))):
    assert got.shape == (shape[-1],) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(b64).sum(0).max())


def test_unknown_reductions_is_named():
  with pytest.raises(ValueError, match="unknown BatchNorm reductions 'fast'; expected one of auto, xla"):
    batch_norm(8, reductions='fast', rngs=nnx.Rngs(0))


@pytest.mark.parametrize('strategy,reductions', [('grouped', 'xla'), ('auto', 'auto'),
                                                 ('shift', 'auto')])
def test_grouped_strategy_keeps_xla_reductions(strategy, reductions):
  """'grouped', the XLA reference, keeps the BatchNorm's sums XLA's own too."""
  layer = ConvNormAct(8, 8, 3, groups=8, strategy=strategy, rngs=nnx.Rngs(0))
  assert layer.bn.reductions == reductions


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
