"""Every registered model: golden counts against the references, and train/eval behaviour."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sepnets
from sepnets import costs

REFERENCE = json.loads((Path(__file__).parents[1] / 'data' / 'reference_counts.json').read_text())
ROWS = REFERENCE['rows']


def counts(name, image_size, **overrides):
  model = nnx.eval_shape(lambda: sepnets.create_model(name, rngs=nnx.Rngs(0), **overrides))
  t = costs.totals(costs.layer_costs(model, (1, image_size, image_size, 3)))
  return {'params': t.params, 'stats': t.stats, 'macs': t.macs}, model


def test_issue_anchor_numbers():
  """The parity numbers the zoo issue states, independent of the recorded file."""
  anchors = {'mobilenet_v1': (4_231_976, 568_740_352), 'mobilenet_v2': (3_504_872, 300_774_272),
             'mobilenet_v3_large': (5_483_032, 216_589_760),
             'efficientnet_b0': (5_288_548, 385_814_752)}
  for name, (params, macs) in anchors.items():
    got, _ = counts(name, 224)
    assert (got['params'], got['macs']) == (params, macs), name
  assert counts('mobilenet_v2', 224)[0]['stats'] == 34_112


@pytest.mark.parametrize('row', ROWS, ids=lambda r: f"{r['model']}-w{r['width']}-{r['image_size']}")
def test_golden_counts_match_reference(row):
  overrides = {} if row['width'] is None else {'width': row['width']}
  got, model = counts(row['model'], row['image_size'], **overrides)
  assert got == {k: row[k] for k in ('params', 'stats', 'macs')}
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
  assert (params, stats) == (row['params'], row['stats'])


def test_every_registered_model_has_golden_counts_at_its_default_size():
  covered = {(r['model'], r['image_size']) for r in ROWS if r['width'] is None}
  for name in sepnets.list_models():
    assert (name, sepnets.get_model_def(name).default_image_size) in covered, name


def test_mobilenet_v1_full_conv_is_the_papers_conv_mobilenet():
  """Table 4: 29.3M parameters, 4866M mult-adds for the all-standard-conv MobileNet."""
  got, _ = counts('mobilenet_v1', 224, full_conv=True)
  chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
  convs = sum(9 * a * b for a, b in zip(chans[:-1], chans[1:]))
  expected = 9 * 3 * 32 + convs + 2 * sum(chans) + 1024 * 1000 + 1000
  assert got['params'] == expected
  assert round(got['params'] / 1e6, 1) == 29.3
  # Table 4's 4866M mult-adds match ours without the classifier's 1,024,000: 4,866.27M.
  assert round((got['macs'] - 1024 * 1000) / 1e6) == 4866
  separable, _ = counts('mobilenet_v1', 224)
  assert got['macs'] / separable['macs'] > 8


BIG = {'efficientnet_b3', 'efficientnet_b4', 'efficientnet_b5', 'efficientnet_b6',
       'efficientnet_b7', 'mobilenet_v4_conv_medium', 'mobilenet_v4_conv_large'}


def _state(model, kind):
  return [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model, kind))]


def _changed(before, after):
  return sum(not np.array_equal(a, b) for a, b in zip(before, after))


def _bn_stats(model):
  """(mean, var) per BatchNorm layer."""
  return [(np.asarray(bn.mean[...]).copy(), np.asarray(bn.var[...]).copy())
          for _, bn in nnx.iter_graph(model) if isinstance(bn, nnx.BatchNorm)]


def _bn_layers_changed(before, after):
  """BatchNorm layers whose running mean or variance moved. (A layer fed by a linear conv of
  a BN output with no activation between, as in MobileNetV4's UIB, keeps a zero mean.)"""
  return sum(not (np.array_equal(m0, m1) and np.array_equal(v0, v1))
             for (m0, v0), (m1, v1) in zip(before, after))


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in sepnets.list_models()])
def test_forward_eval_and_train_step(name, rng):
  model = sepnets.create_model(name, rngs=nnx.Rngs(0), num_classes=10)
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
  y = jnp.array([1, 7])
  params, stats = _state(model, nnx.Param), _bn_stats(model)

  logits = nnx.jit(lambda m, x: m(x))(model, x)
  assert logits.shape == (2, 10)
  assert np.isfinite(np.asarray(logits)).all()
  assert _changed(params, _state(model, nnx.Param)) == 0
  assert _bn_layers_changed(stats, _bn_stats(model)) == 0

  model.train()

  @nnx.jit
  def train_step(model, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    nnx.update(model, jax.tree.map(lambda p, g: p - 0.1 * g, nnx.state(model, nnx.Param), grads))
    return loss

  loss = train_step(model, x, y)
  assert np.isfinite(float(loss))
  assert _changed(params, _state(model, nnx.Param)) > len(params) // 2
  assert _bn_layers_changed(stats, _bn_stats(model)) == len(stats)
