"""The peers benchmark (sepnets vs PyTorch and Keras) on a tiny configuration: it runs, the two
models compute the same function, and the ratios are what the times say."""

import os

import pytest

os.environ.setdefault('KERAS_BACKEND', 'jax')

from sepnets.compile.peers import PeersConfig, format_markdown, run_peers  # noqa: E402


def test_peers_measures_identical_models_side_by_side():
  config = PeersConfig(models=('mobilenet_v2',), image_size=32, infer_batches=(2,),
                       train_batch=2, warmup=1, repeats=1)
  result = run_peers(config)
  rows = result['rows']
  assert [(r['workload'], r['batch']) for r in rows] == [('infer', 2), ('train', 2)]
  for r in rows:
    assert r['sepnets_s'] > 0 and r['torch_s'] > 0 and r['keras_s'] > 0
    assert r['ratio_torch'] == pytest.approx(r['sepnets_s'] / r['torch_s'])
    assert r['ratio_keras'] == pytest.approx(r['sepnets_s'] / r['keras_s'])
    assert r['compile_s'] > 0
    assert r['max_logit_diff'] < 1e-3  # the same weights give the same logits
  text = format_markdown(result, 'python benchmarks/peers.py')
  assert '| mobilenet_v2 | inference, batch 2 |' in text and 'sepnets / PyTorch' in text
  assert 'Keras' in text and result['metadata']['versions']['torch']


@pytest.mark.parametrize('kwargs, message', [
    (dict(models=('resnet50',)), 'no peer definition'),
    (dict(peers=('mxnet',)), 'unknown peer'),
    (dict(image_size=16), 'at least 32'),
    (dict(infer_batches=(0,)), 'positive'),
    (dict(infer_batches=()), 'at least one inference batch'),
])
def test_bad_peers_config_is_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    PeersConfig(**kwargs)
