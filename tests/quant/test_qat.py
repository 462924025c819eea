"""Quantization-aware training through `sepnets train` (quant.enabled)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepnets.quant.layers import quant_layers
from sepnets.train.config import ConfigError, load_config
from sepnets.train.loop import Run, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, 'configs', 'smoke.py:tiny')


@pytest.fixture(scope='module')
def float_run(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('float'))
  train_and_evaluate(load_config(TINY, ['model.dropout=0.0']), path, progress=False)
  return path


def qat_config(float_run, *extra):
  return load_config(TINY, ['model.dropout=0.0', 'quant.enabled=True',
                            f'quant.init_from={float_run}', 'quant.calibration_batches=1',
                            'train.steps=4', 'optimizer.learning_rate=0.01', *extra])


def test_qat_model_evaluates_exactly_as_it_trains(float_run, tmp_path):
  run = Run(qat_config(float_run), str(tmp_path))
  try:
    model = run.model
    layers = quant_layers(model)
    assert layers and all(layer.mode == 'quant' for layer in layers)
    assert run.quant_info['init_weights'] == 'ema' and run.quant_info['init_step'] == 12
    assert layers[1].quant.weight_bits == 8 and not layers[1].quant.per_channel
    x = jnp.asarray(run.eval_data.batch(0).images)
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    model.train()
    trained_mode = model(x)
    model.eval()
    np.testing.assert_array_equal(trained_mode, model(x))  # folded BN: no batch statistics
    after = nnx.state(model, nnx.BatchStat)
    jax.tree.map(np.testing.assert_array_equal, stats, jax.tree.map(np.asarray, after))
  finally:
    run.close()


def test_qat_run_fine_tunes_and_reports(float_run, tmp_path):
  summary = train_and_evaluate(qat_config(float_run), str(tmp_path), progress=False)
  assert summary['steps'] == 4 and np.isfinite(summary['train']['loss'])
  assert summary['quant']['weight_bits'] == 8 and summary['quant']['init_step'] == 12
  # resumable like any run: the same command continues from its own checkpoint
  assert os.path.isfile(tmp_path / 'quant.json')  # a resume needs neither float run nor data
  again = train_and_evaluate(qat_config(float_run), str(tmp_path), progress=False)
  assert again['eval'] == summary['eval'] and again['quant'] == summary['quant']


def test_qat_config_errors_are_named(tmp_path):
  with pytest.raises(ConfigError, match="'quant.init_from' must name the float run"):
    load_config(TINY, ['quant.enabled=True'])
  with pytest.raises(ConfigError, match="'quant.weight_bits' must be in \\[4, 8\\]"):
    load_config(TINY, ['quant.enabled=True', 'quant.init_from=x', 'quant.weight_bits=9'])
  with pytest.raises(FileNotFoundError, match='has no config.json: not a workdir'):
    Run(load_config(TINY, ['quant.enabled=True', f'quant.init_from={tmp_path}']),
        str(tmp_path / 'qat'))
