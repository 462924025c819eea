"""The training loop end to end on tiny runs: it learns, resumes exactly, stops on NaN, and
names a corrupt or mismatched checkpoint."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from sepnets.train.checkpoint import CheckpointError
from sepnets.train.config import load_config
from sepnets.train.loop import TrainingDiverged, evaluate, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, 'configs', 'smoke.py:tiny')


def tiny(*overrides):
  return load_config(TINY, list(overrides))


def records(workdir, split='train'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    out = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in ('images_per_s', 'step_time_ms')}
          for r in out if r['split'] == split]


def without_workdir(summary):
  return {k: v for k, v in summary.items() if k != 'workdir'}


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tiny'))
  summary = train_and_evaluate(tiny(), workdir, progress=False)
  return workdir, summary


def test_tiny_run_writes_everything(tiny_run):
  workdir, summary = tiny_run
  assert summary['steps'] == 12 and summary['devices'] == 1
  assert np.isfinite(summary['train']['loss'])
  assert summary['eval']['examples'] == 64 and 'eval_ema' in summary
  train = records(workdir)
  assert [r['step'] for r in train] == [2, 4, 6, 8, 10, 12]
  assert {'loss', 'accuracy', 'learning_rate', 'epoch'} <= set(train[0])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    first = json.loads(f.readline())
  assert first['images_per_s'] > 0 and first['step_time_ms'] > 0
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '8']  # keep 2
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f) == summary
  config = json.load(open(os.path.join(workdir, 'config.json')))
  assert config['train']['steps'] == 12


def test_resume_from_a_checkpoint_is_exact(tiny_run, tmp_path):
  workdir, summary = tiny_run
  os.makedirs(tmp_path / 'checkpoints')
  shutil.copytree(os.path.join(workdir, 'checkpoints', '8'), tmp_path / 'checkpoints' / '8')
  resumed = train_and_evaluate(tiny(), str(tmp_path), progress=False)
  assert without_workdir(resumed) == without_workdir(summary)  # bitwise: floats compare equal
  assert records(tmp_path)[-2:] == records(workdir)[-2:]


def test_evaluate_matches_the_final_summary(tiny_run):
  workdir, summary = tiny_run
  result = evaluate(tiny(), workdir)
  assert result['step'] == 12
  assert result['eval'] == summary['eval'] and result['eval_ema'] == summary['eval_ema']


def test_a_finished_run_resumes_to_the_same_summary(tiny_run, tmp_path):
  workdir, summary = tiny_run
  shutil.copytree(workdir, tmp_path / 'copy')
  again = train_and_evaluate(tiny(), str(tmp_path / 'copy'), progress=False)
  assert without_workdir(again) == without_workdir(summary)


def test_corrupt_checkpoint_is_named(tiny_run, tmp_path):
  workdir, _ = tiny_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  for root, _, files in os.walk(copy / 'checkpoints' / '12' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  with pytest.raises(CheckpointError, match=r"checkpoint '.*copy/checkpoints/12' is unreadable"):
    evaluate(tiny(), str(copy))


def test_checkpoint_of_another_model_is_refused(tiny_run, tmp_path):
  workdir, _ = tiny_run
  shutil.copytree(workdir, tmp_path / 'copy')
  with pytest.raises(CheckpointError, match='does not match this model and config'):
    evaluate(tiny('model.width=0.5'), str(tmp_path / 'copy'))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny('optimizer.learning_rate=1e30', 'train.log_every=1', 'train.checkpoint_every=1',
                'optimizer.momentum=0.0', 'train.ema_decay=0.0', 'train.label_smoothing=0.0')
  with pytest.raises(TrainingDiverged, match=r'became NaN or infinite at step (\d+); stopped') as e:
    train_and_evaluate(config, str(tmp_path), progress=False)
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  bad = int(str(e.value).split('at step ')[1].split(';')[0])
  assert steps and steps[-1] == bad - 1
  assert f'last good checkpoint, step {bad - 1}' in str(e.value)
  assert all(np.isfinite(r['loss']) for r in records(tmp_path))
  assert not os.path.exists(tmp_path / 'summary.json')


def test_bad_model_fails_before_data_loads(tmp_path):
  config = tiny('model.name=mobilenet_v9', 'data.name=cifar10', 'data.dir=/no/such')
  with pytest.raises(ValueError, match="unknown model 'mobilenet_v9'"):
    train_and_evaluate(config, str(tmp_path), progress=False)


def test_missing_data_directory_is_named(tmp_path):
  config = tiny('data.name=cifar10', 'data.dir=/no/such')
  with pytest.raises(ValueError, match="cifar10 data directory '/no/such' does not exist"):
    train_and_evaluate(config, str(tmp_path), progress=False)


def test_mnist_channels_flow_into_the_model(tmp_path):
  from tests.train.test_datasets import write_mnist
  write_mnist(tmp_path, n_train=40, n_test=10)
  config = tiny('data.name=mnist', f'data.dir={tmp_path}', 'train.steps=2', 'train.log_every=1',
                'train.batch_size=8', 'train.eval_batch_size=8', 'data.mean=(0.5,)')
  summary = train_and_evaluate(config, str(tmp_path / 'run'), progress=False)
  assert summary['dataset'] == 'mnist' and summary['eval']['examples'] == 10
