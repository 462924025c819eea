"""Process-level guarantees: SIGKILL mid-run then the same command resumes to the uninterrupted
result bit for bit; data parallel over 4 forced host devices matches one device.

Why the device comparison is per step: a sharded step sums the batch in a different order, so
activations differ from the one-device step by float32 rounding (about 1e-6 relative). A unit
whose pre-activation lies within that rounding of a ReLU kink then lands on the other side, and
its whole contribution to the gradient switches on or off: the gradient is discontinuous, so the
difference is not rounding-sized any more. The smoke model has 1.6 million activations per
step; comparing float32 with float64 at step 3, three of them had flipped. Measured here on the smoke model: one step from the same state
on 1 and 4 devices gives parameters within 1e-7 (relative norm) on most steps and 1e-5..3e-4
on the steps with a flip. Free-running, the losses agree to 3e-6 for the first steps and then
separate (1e-1 by step 12), exactly as they do on ONE device when only the order of examples
inside each batch is permuted. Where they separate depends on the lowering: with XLA's
convolutions everywhere at step 4 (5e-3); with the CPU dots for pointwise convs and the stem
(sepnets.layers.pointwise, .dense) already at step 3 (2.393 vs 2.368, 1e-2), so the free-running
tests compare the first 2 steps, which still check one full update (the all-reduced gradient). It is not float32 alone: run in float64, 1 and 4
devices agree to 1e-16 for 5 steps and still differ by 1e-2 at step 10. Training is unstable in
this sense (Summers & Dinneen 2021, arXiv:2103.04514: one-bit changes lead to different
models). So the tests check (1) each of 12 data-parallel steps against the one-device step
from the same state and (2) the free-running trajectories over their first 2 steps.
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


STEPWISE = """
import dataclasses, json
import jax, numpy as np, optax
from sepnets.train.config import load_config
from sepnets.train.loop import Run
from sepnets.train.state import empty_metrics
assert jax.device_count() == 4, jax.devices()
runs = {n: Run(load_config(TINY, [f'train.devices={n}']), WORKDIR + f'/r{n}')
        for n in (1, 4)}
one, four = runs[1], runs[4]
copy = lambda state, run: jax.device_put(state, run.replicated, may_alias=False)  # steps donate
state = one.init()
out = {'loss1': [], 'loss4': [], 'param_err': []}
for step in range(12):  # from the SAME state each step: one device vs four
  batch = one.train_data.batch(step)
  a = one.train_step(copy(state, one), one.to_device(batch.images), one.to_device(batch.labels))
  b = four.train_step(copy(state, four), four.to_device(batch.images),
                      four.to_device(batch.labels))
  assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(b.params))
  out['loss1'].append(float(a.metrics['loss'])); out['loss4'].append(float(b.metrics['loss']))
  diff = jax.tree.map(lambda x, y: np.asarray(x) - np.asarray(y), a.params, b.params)
  out['param_err'].append(float(optax.tree.norm(diff) / optax.tree.norm(a.params)))
  state = dataclasses.replace(a, metrics=empty_metrics())
print(json.dumps(out))
"""


def run_four_devices(script):
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          env=env(XLA_FLAGS='--xla_force_host_platform_device_count=4'))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_data_parallel_step_equals_the_one_device_step(tmp_path):
  """Teacher-forced along the one-device trajectory: each of the 12 steps, taken from the same
  state on 4 devices (batch sharded, params replicated, BatchNorm statistics over the global
  batch), gives the same loss to float32 rounding and the same new parameters up to ReLU kink
  flips (module docstring)."""
  out = run_four_devices(f'TINY = {TINY!r}\nWORKDIR = {str(tmp_path)!r}\n' + STEPWISE)
  assert len(out['loss1']) == 12
  np.testing.assert_allclose(out['loss4'], out['loss1'], rtol=1e-5)
  errors = np.array(out['param_err'])
  assert np.median(errors) < 1e-6, errors  # rounding
  assert errors.max() < 1e-3, errors  # a kink flip moves a step by 1e-5..1e-4, never more


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
  out = run_four_devices(script)
  one, four = np.array(out['1']), np.array(out['4'])
  assert len(one) == len(four) == 12
  np.testing.assert_allclose(four[:2], one[:2], rtol=1e-4)  # measured: 3e-7


def free_port():
  import socket
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_as_many_devices(tmp_path):
  """Multi-host, simulated: `sepnets train --distributed ADDRESS,2,I` in two processes of two
  CPU devices each (gloo collectives) against one process with four devices."""
  port = free_port()
  procs = [subprocess.Popen(
      train_cmd(tmp_path / 'multi', '--config.train.log_every=1', '--distributed',
                f'localhost:{port},2,{i}'), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=env(XLA_FLAGS='--xla_force_host_platform_device_count=2'))
      for i in (0, 1)]
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  assert summary(tmp_path / 'multi')['devices'] == 4
  assert '"workdir"' in outs[0][0] and '"workdir"' not in outs[1][0]  # process 0 reports
  subprocess.run(train_cmd(tmp_path / 'single', '--config.train.log_every=1'), check=True,
                 capture_output=True, env=env(XLA_FLAGS='--xla_force_host_platform_device_count=4'))
  multi = [r['loss'] for r in train_records(tmp_path / 'multi') if r['split'] == 'train']
  single = [r['loss'] for r in train_records(tmp_path / 'single') if r['split'] == 'train']
  assert len(multi) == len(single) == 12
  # rounding, or a kink flip (measured here: 1.2e-5 at step 3; see the module docstring)
  np.testing.assert_allclose(multi[:2], single[:2], rtol=1e-4)
  assert sorted(os.listdir(tmp_path / 'multi' / 'checkpoints')) == ['12', '8']


def test_bad_distributed_spec_is_named(tmp_path):
  result = subprocess.run(train_cmd(tmp_path, '--distributed', 'localhost:1234,2'),
                          capture_output=True, text=True, env=env())
  assert result.returncode != 0
  assert "--distributed 'localhost:1234,2': expected auto or COORDINATOR:PORT" in result.stderr
  assert 'Traceback' not in result.stderr
