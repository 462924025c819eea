"""Process-level settings that decide CPU speed: glibc malloc's reuse of large buffers.

XLA:CPU (its YNNPACK fusions allocate tens of MB of scratch per call) and PyTorch allocate and
free big activation buffers every step. glibc serves each from a fresh mmap (above its mmap
threshold, or from a per-thread arena's heap, which is unmapped when empty), so every step
page-faults all of that memory in again: measured on 2 cores, mobilenet_v2's train step at
batch 32 spent half its CPU time in the kernel (page faults and unmaps).
`tune_malloc()` keeps freed memory for reuse: one arena, no mmap'd chunks, no trimming. The
price is that the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
ENV = 'SEPNETS_MALLOC'  # 'default' leaves glibc malloc as it is

_tuned: bool | None = None


def tune_malloc() -> bool:
  """Sets glibc malloc to reuse freed memory (see the module docstring); True if it did.

  Call it before JAX or PyTorch start their thread pools (arenas already created by other
  threads stay). A no-op returning False when `SEPNETS_MALLOC=default` or the C library is not
  glibc. Applies to the whole process, PyTorch included.
  """
  global _tuned
  if _tuned is not None:
    return _tuned
  _tuned = False
  if os.environ.get(ENV, 'tuned') == 'default':
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # -1 as the trim threshold is SIZE_MAX: never give the heap's top back
  _tuned = all(mallopt(option, value) == 1 for option, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
  return _tuned


def malloc_state() -> str:
  return 'tuned' if _tuned else 'default'
