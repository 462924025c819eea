"""Process-level guarantees: SIGKILL mid-run then the same command resumes to the uninterrupted
result bit for bit; data parallel over 4 forced host devices matches one device.

Known limit (open in the training issue): after about three steps the smoke model's trajectory
departs from fp agreement even on ONE device when only the order of examples inside each batch
changes, so the device comparison covers the first three steps, where 1 and 4 devices agree to
float32 rounding.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, 'configs', 'smoke.py:tiny')
LONG = ['--config.train.steps=150', '--config.train.checkpoint_every=10',
        '--config.train.log_every=5']


def env(**extra):
  e = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **extra)
  return e


def train_cmd(workdir, *overrides):
  return [sys.executable, '-m', 'sepnets.cli', 'train', '--config', TINY, '--workdir',
          str(workdir), '--quiet', *overrides]


def train_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in r.items() if k not in ('images_per_s', 'step_time_ms')}
            for r in map(json.loads, f)]


def summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    s = json.load(f)
  s.pop('workdir')
  return s


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
  clean, killed = tmp_path / 'clean', tmp_path / 'killed'
  subprocess.run(train_cmd(clean, *LONG), env=env(), check=True, capture_output=True)

  proc = subprocess.Popen(train_cmd(killed, *LONG), env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  checkpoints = killed / 'checkpoints'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = [d for d in os.listdir(checkpoints) if d.isdigit()] if checkpoints.exists() else []
    if done:  # the first checkpoint is complete: kill in the middle of the run
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  assert proc.wait() == -signal.SIGKILL, 'the run ended before it could be killed'
  assert not (killed / 'summary.json').exists()

  rerun = subprocess.run(train_cmd(killed, *LONG), env=env(), check=True, capture_output=True,
                         text=True)
  resumed_at = int(rerun.stderr.split('resuming from step ')[1].split()[0])
  assert 0 < resumed_at < 150
  assert summary(killed) == summary(clean)  # bitwise: every float is equal
  assert train_records(killed) == train_records(clean)


@pytest.mark.slow
def test_four_devices_match_one_device_for_the_first_steps(tmp_path):
  script = f"""
import json, sys
import jax
from sepnets.train.config import load_config
from sepnets.train.loop import train_and_evaluate
assert jax.device_count() == 4, jax.devices()
out = {{}}
for n in (1, 4):
  config = load_config({TINY!r}, [f'train.devices={{n}}', 'train.log_every=1'])
  summary = train_and_evaluate(config, {str(tmp_path)!r} + f'/d{{n}}', progress=False)
  assert summary['devices'] == n
  with open({str(tmp_path)!r} + f'/d{{n}}/metrics.jsonl') as f:
    out[n] = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
  out[f'eval{{n}}'] = summary['eval']['loss']
print(json.dumps(out))
"""
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          env=env(XLA_FLAGS='--xla_force_host_platform_device_count=4'))
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  one, four = np.array(out['1']), np.array(out['4'])
  assert len(one) == len(four) == 12
  np.testing.assert_allclose(four[:3], one[:3], rtol=1e-5)
