"""Process-level settings that decide CPU speed: which malloc serves the big per-step buffers.

XLA:CPU (its YNNPACK fusions allocate scratch inside their parallel loops) and PyTorch allocate
and free big activation buffers every step. With glibc's defaults each comes from a fresh mmap
(above its mmap threshold, or from a per-thread arena's heap, which is unmapped when empty), so
every step page-faults all of that memory in again: measured on 2 cores, mobilenet_v2's train
step at batch 32 spent half its CPU time in the kernel (page faults and unmaps).

Two remedies, best first:

- **tcmalloc** (gperftools' `libtcmalloc_minimal.so.4`, Debian/Ubuntu package
  `libtcmalloc-minimal4`; `bash .ci/tcmalloc` installs it, or unpacks it without root). A
  malloc cannot be swapped inside a running process, so `use_fast_malloc()`, called first
  thing by a benchmark's entry point, re-executes the process with the library in
  `LD_PRELOAD`. PyTorch's CPU tuning guide recommends the same for its own training.
- **tuned glibc** (`tune_malloc()`): one arena, no mmap'd chunks, no trimming, so freed
  memory is reused. It stops the page faults, but with every thread in one fragmented heap,
  `malloc` itself walks long free lists: perf put 8% of mobilenet_v2's train step in glibc's
  `_int_malloc`. The price of both is that a process keeps its peak heap until it exits.

`SEPNETS_MALLOC` chooses: `tcmalloc` (the default: tcmalloc where found, else tuned glibc),
`tuned` (glibc, tuned), `default` (glibc as it is). `SEPNETS_TCMALLOC` names the library
file when it is not in a standard place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import sysconfig
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
ENV = 'SEPNETS_MALLOC'
MODES = ('tcmalloc', 'tuned', 'default')
TCMALLOC_ENV = 'SEPNETS_TCMALLOC'
TCMALLOC_PACKAGE = 'libtcmalloc-minimal4'
TCMALLOC_FILES = ('libtcmalloc_minimal.so.4', 'libtcmalloc.so.4')
_REEXEC_ENV = '_SEPNETS_MALLOC_REEXEC'  # set in the re-executed process: never loop

_tuned: bool | None = None


def _mode() -> str:
  mode = os.environ.get(ENV, 'tcmalloc')
  if mode not in MODES:
    raise ValueError(f'{ENV}={mode!r} is not one of {", ".join(MODES)}')
  return mode


def tune_malloc() -> bool:
  """Sets glibc malloc to reuse freed memory (see the module docstring); True if it did.

  Call it before JAX or PyTorch start their thread pools (arenas already created by other
  threads stay). A no-op returning False when `SEPNETS_MALLOC=default`, when tcmalloc already
  serves this process, or when the C library is not glibc. Applies to the whole process,
  PyTorch included.
  """
  global _tuned
  if _tuned is not None:
    return _tuned
  _tuned = False
  if _mode() == 'default' or tcmalloc_loaded():
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


def tcmalloc_loaded() -> bool:
  """Whether a tcmalloc library is mapped into this process (Linux; False elsewhere)."""
  try:
    maps = Path('/proc/self/maps').read_text()
  except OSError:
    return False
  return any(name in maps for name in TCMALLOC_FILES)


def tcmalloc_dirs() -> list[Path]:
  """Where `find_tcmalloc` looks: the system's library folders, then the no-root unpack of
  the Debian package that `.ci/tcmalloc` makes under ~/.cache/sepnets."""
  arch = sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'
  cache = Path.home() / '.cache' / 'sepnets' / TCMALLOC_PACKAGE
  return [Path('/usr/lib') / arch, Path('/usr/lib64'), Path('/usr/lib'),
          Path('/usr/local/lib'), cache / 'usr' / 'lib' / arch]


def find_tcmalloc() -> str | None:
  """The tcmalloc library to preload: `SEPNETS_TCMALLOC` if set (it must exist), else the first
  of `TCMALLOC_FILES` in `tcmalloc_dirs()`; None when there is none."""
  explicit = os.environ.get(TCMALLOC_ENV)
  if explicit:
    if not Path(explicit).is_file():
      raise FileNotFoundError(f'{TCMALLOC_ENV}={explicit!r}: no such file')
    return explicit
  for folder in tcmalloc_dirs():
    for name in TCMALLOC_FILES:
      if (folder / name).is_file():
        return str(folder / name)
  return None


def use_fast_malloc() -> str:
  """A script's first call: serve this process from tcmalloc, else from tuned glibc.

  Under `SEPNETS_MALLOC=tcmalloc` (the default) with tcmalloc found but not loaded, this
  re-executes the interpreter with the same command line and the library prepended to
  `LD_PRELOAD`, so it must run before anything is done that should not happen twice. If the
  preload did not take, or there is no tcmalloc, glibc is tuned instead, with a note on
  stderr. Returns `malloc_state()`. Never call it from library code or a test process.
  """
  mode = _mode()
  if mode == 'tcmalloc' and not tcmalloc_loaded():
    library = find_tcmalloc()
    if library is None:
      print(f'sepnets: no tcmalloc (install {TCMALLOC_PACKAGE}: bash .ci/tcmalloc); '
            'using tuned glibc malloc', file=sys.stderr)
    elif os.environ.get(_REEXEC_ENV):
      print(f'sepnets: {library} did not load from LD_PRELOAD; using tuned glibc malloc',
            file=sys.stderr)
    else:
      preload = ':'.join(p for p in (library, os.environ.get('LD_PRELOAD')) if p)
      sys.stdout.flush()
      sys.stderr.flush()
      os.execve(sys.executable, sys.orig_argv, {**os.environ, 'LD_PRELOAD': preload,
                                                _REEXEC_ENV: '1'})
  tune_malloc()
  return malloc_state()


def malloc_state() -> str:
  """'tcmalloc', 'tuned glibc' or 'default glibc': what serves this process's malloc."""
  if tcmalloc_loaded():
    return 'tcmalloc'
  return 'tuned glibc' if _tuned else 'default glibc'


def cpu_compiler_options() -> dict[str, int]:
  """XLA:CPU options that the peers benchmark compiles sepnets' steps with: on a CPU with
  AVX-512, 512-bit vectors for XLA's own loops (its default prefers 256). Measured in one
  process against the default (2 cores, tcmalloc): train steps at batch 32 4.0% faster for
  mobilenet_v2, 3.5% for mobilenet_v3_large, 4.6% for efficientnet_b0; inference the same or
  better. Pass it as `jax.jit(..., compiler_options=cpu_compiler_options())`; other
  backends ignore it. Empty where /proc/cpuinfo lists no avx512f.
  """
  try:
    flags = Path('/proc/cpuinfo').read_text()
  except OSError:
    return {}
  return {'xla_cpu_prefer_vector_width': 512} if ' avx512f' in flags else {}
