"""glibc malloc tuning: freed big buffers are reused instead of being unmapped and faulted in
again on the next step."""

import os
import subprocess
import sys

# In a fresh process: allocate, touch and free 64 MiB five times from a worker thread (as XLA
# does), and count the minor page faults of the last four rounds.
PROBE = r'''
import ctypes, resource, sys, threading
from sepnets.runtime import tune_malloc
print(tune_malloc())
libc = ctypes.CDLL('libc.so.6')
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
print(rounds.faults)
'''


def probe(malloc: str) -> tuple[str, int]:
  env = {**os.environ, 'SEPNETS_MALLOC': malloc}
  out = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0], int(out[1])


def test_tuned_malloc_reuses_freed_buffers():
  tuned, tuned_faults = probe('tuned')
  default, default_faults = probe('default')
  assert (tuned, default) == ('True', 'False')
  pages = 4 * (64 << 20) // 4096  # four rounds of 64 MiB in 4 KiB pages
  assert default_faults > pages / 2  # glibc maps each round afresh
  assert tuned_faults < pages / 20  # reused: almost no new faults
