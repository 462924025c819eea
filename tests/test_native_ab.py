"""benchmarks/native_ab.py: builds of the native kernels side by side, and its errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('sepnets.native')
SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'native_ab.py'


def run(*args):
  return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, timeout=600)


def test_two_builds_every_pass_and_totals():
  done = run('--builds', 'worktree,worktree', '--shapes', '16@12/3/1,24@9/5/2', '--batch', '2',
             '--rounds', '3')
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert '| shape (channels@size/kernel/stride) | pass | worktree | worktree |' in lines
  for shape in ('16@12/3/1', '24@9/5/2'):
    for name in ('forward', 'input_grad', 'tap_grad'):
      row = [line for line in lines if line.startswith(f'| {shape} | {name} |')]
      assert len(row) == 1, (shape, name, done.stdout)
      first, second = row[0].strip('|').split('|')[2:]
      assert float(first) > 0 and float(second.split('(')[0]) > 0
  totals = [line for line in lines if line.startswith('| **total** |')]
  assert [t.split('|')[2].strip() for t in totals] == ['forward', 'input_grad', 'tap_grad']


@pytest.mark.parametrize('args,message', [
    (('--builds', 'worktree'), 'at least two builds'),
    (('--builds', 'worktree,worktree', '--shapes', '16@12/3'), "bad shape '16@12/3'"),
    (('--builds', 'worktree,worktree', '--shapes', 'resnet50'), "unknown model 'resnet50'"),
    (('--builds', 'worktree,worktree', '--passes', 'backward'), "unknown 'backward'"),
    (('--builds', 'no-such-revision,worktree', '--shapes', '16@12/3/1'),
     "build 'no-such-revision': no sepnets/native/depthwise.cc at that revision"),
])
def test_bad_arguments_are_named(args, message):
  done = run(*args)
  assert done.returncode == 2
  assert message in done.stderr, done.stderr
  assert 'Traceback' not in done.stderr
