"""malloc choice: tcmalloc by re-executing a script with it preloaded, else tuned glibc; both
reuse freed big buffers instead of faulting them in again on the next step."""

import json
import os
import subprocess
import sys

import pytest

from sepnets import runtime

# In a fresh process: allocate, touch and free 64 MiB five times from a worker thread (as XLA
# does), and count the minor page faults of the last four rounds. `CDLL(None)` resolves
# malloc as the process does (tcmalloc's when it is preloaded).
PROBE = r'''
import ctypes, json, resource, sys, threading
from sepnets.runtime import use_fast_malloc
print('start', flush=True)
state = use_fast_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def rounds():
  for i in range(5):
    if i == 1:
      rounds.start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
  rounds.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - rounds.start
t = threading.Thread(target=rounds); t.start(); t.join()
print(json.dumps([state, rounds.faults, sys.argv[1:]]))
'''
PAGES = 4 * (64 << 20) // 4096  # four rounds of 64 MiB in 4 KiB pages


def probe(malloc: str, **env: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'SEPNETS_MALLOC': malloc, **env}
  env.pop('LD_PRELOAD', None)
  return subprocess.run([sys.executable, '-c', PROBE, 'one', 'two words'], env=env,
                        capture_output=True, text=True)


def parse(run: subprocess.CompletedProcess) -> tuple[int, str, int, list[str]]:
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  state, faults, argv = json.loads(lines[-1])
  return lines.count('start'), state, faults, argv


def test_tcmalloc_is_installed_where_sepnets_looks():
  # .ci/tcmalloc installs it (CI runs it); the benchmarks fall back to glibc without it
  assert runtime.find_tcmalloc() is not None, 'run: bash .ci/tcmalloc'


def test_fast_malloc_reexecutes_under_tcmalloc_with_the_same_arguments():
  starts, state, faults, argv = parse(probe('tcmalloc'))
  assert (starts, state, argv) == (2, 'tcmalloc', ['one', 'two words'])
  assert faults < PAGES / 20  # freed spans are reused, not faulted in again


def test_tuned_glibc_reuses_freed_buffers_and_default_does_not():
  starts, tuned, tuned_faults, _ = parse(probe('tuned'))
  _, default, default_faults, _ = parse(probe('default'))
  assert (starts, tuned, default) == (1, 'tuned glibc', 'default glibc')
  assert default_faults > PAGES / 2  # glibc maps each round afresh
  assert tuned_faults < PAGES / 20  # reused: almost no new faults


def test_named_tcmalloc_must_exist(tmp_path):
  missing = tmp_path / 'libtcmalloc_minimal.so.4'
  run = probe('tcmalloc', SEPNETS_TCMALLOC=str(missing))
  assert run.returncode != 0 and f'SEPNETS_TCMALLOC={str(missing)!r}: no such file' in run.stderr


def test_a_preload_that_does_not_take_falls_back_to_tuned_glibc(tmp_path):
  # a file that is no shared library: the loader ignores it, the re-executed process sees
  # no tcmalloc and must not re-execute again
  bogus = tmp_path / 'libtcmalloc_minimal.so.4'
  bogus.write_text('not a library')
  run = probe('tcmalloc', SEPNETS_TCMALLOC=str(bogus))
  starts, state, _, argv = parse(run)
  assert (starts, state, argv) == (2, 'tuned glibc', ['one', 'two words'])
  assert 'did not load from LD_PRELOAD' in run.stderr


def test_bad_malloc_mode_is_named(monkeypatch):
  monkeypatch.setenv('SEPNETS_MALLOC', 'jemalloc')
  with pytest.raises(ValueError, match="SEPNETS_MALLOC='jemalloc' is not one of tcmalloc, "
                     'tuned, default'):
    runtime.use_fast_malloc()
  run = subprocess.run([sys.executable, '-m', 'sepnets.cli', 'models'], capture_output=True,
                       text=True, env={**os.environ, 'SEPNETS_MALLOC': 'jemalloc'})
  assert run.returncode == 1 and run.stderr.strip() == (
      "sepnets: error: SEPNETS_MALLOC='jemalloc' is not one of tcmalloc, tuned, default")
