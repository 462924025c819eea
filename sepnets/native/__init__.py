"""Native XLA:CPU kernels (C++, XLA FFI), built on first use with the system C++ compiler.

`depthwise_targets()` compiles `SOURCES` (the depthwise convolution, `depthwise.cc`, and
BatchNorm's per-channel sums, `channel_sums.cc`, sharing `simd.h`) into one library, against
the XLA FFI headers jaxlib ships (`jax.ffi.include_dir()`), for this machine's CPU
(`-march=native`), into `~/.cache/sepnets/native/<hash>/` (or `$SEPNETS_NATIVE_CACHE`),
keyed by the sources, the jaxlib version, the compiler, its flags and the CPU's flags, so a
change to any rebuilds it; the library is written under a temporary name and renamed into
place. It then registers the custom-call targets with XLA:CPU, once per process.

Where no compiler is found (`$CXX`, else `c++` / `g++` / `clang++` on PATH) or the build
fails, it raises `NativeUnavailable` saying why; `SEPNETS_NATIVE=0` turns native kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib

SOURCE = Path(__file__).with_name('depthwise.cc')
SOURCES = (SOURCE, Path(__file__).with_name('channel_sums.cc'))
HEADERS = (Path(__file__).with_name('simd.h'),)
TARGETS = {'sepnets_dw_conv': 'SepnetsDwConv', 'sepnets_dw_conv_bias_act': 'SepnetsDwConvBiasAct',
           'sepnets_dw_act_conv_bias_act': 'SepnetsDwActConvBiasAct',
           'sepnets_dw_tap_grad': 'SepnetsDwTapGrad', 'sepnets_channel_sums': 'SepnetsChannelSums'}
"""Custom-call target -> exported handler symbol."""
FLAGS = ('-O3', '-march=native', '-std=gnu++17', '-ffp-contract=fast', '-shared', '-fPIC', '-w')
ENV = 'SEPNETS_NATIVE'
CACHE_ENV = 'SEPNETS_NATIVE_CACHE'


class NativeUnavailable(RuntimeError):
  """The native kernels cannot be built or loaded here (the message says why)."""


_state: dict[str, object] = {}


def _compiler() -> str:
  for name in (os.environ.get('CXX'), 'c++', 'g++', 'clang++'):
    if name and shutil.which(name):
      return shutil.which(name)
  raise NativeUnavailable('no C++ compiler found ($CXX, c++, g++ or clang++ on PATH)')


def _cpu_flags() -> str:
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('flags'):
        return line
  except OSError:
    pass
  return ''


def cache_dir() -> Path:
  return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'sepnets' / 'native')


def build(force: bool = False) -> Path:
  """Compiles the kernels (unless an identical build is cached); returns the library path."""
  cxx = _compiler()
  sources = [path.read_bytes() for path in (*SOURCES, *HEADERS)]
  key = hashlib.sha256(b'\0'.join([*sources, jaxlib.__version__.encode(), cxx.encode(),
                                   ' '.join(FLAGS).encode(), _cpu_flags().encode()]))
  lib = cache_dir() / key.hexdigest()[:16] / 'libsepnets_native.so'
  if lib.exists() and not force:
    return lib
  return compile_sources(SOURCE.parent, lib)


def compile_sources(directory: Path, lib: Path) -> Path:
  """Compiles the files named as `SOURCES` in `directory` (where their headers are too) into
  `lib`, written under a temporary name and renamed into place; returns `lib`."""
  cxx = _compiler()
  lib.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=lib.parent, suffix='.so.tmp')
  os.close(fd)
  sources = [str(Path(directory) / path.name) for path in SOURCES]
  cmd = [cxx, *FLAGS, '-I', jax.ffi.include_dir(), *sources, '-o', tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
      names = ', '.join(path.name for path in SOURCES)
      raise NativeUnavailable(f'building {names} failed ({" ".join(cmd)}):\n'
                              + done.stderr[-2000:])
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return lib


def register(lib: Path, suffix: str = '') -> ctypes.CDLL:
  """Loads a library of the kernels and registers its handlers with XLA:CPU as the targets
  `TARGETS` names, each with `suffix` appended (another build beside the one in use)."""
  loaded = ctypes.cdll.LoadLibrary(str(lib))
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target + suffix, jax.ffi.pycapsule(getattr(loaded, symbol)),
                                platform='cpu')
  return loaded


def enabled() -> bool:
  return os.environ.get(ENV, '1') != '0'


def depthwise_targets() -> tuple[str, ...]:
  """Builds (if needed) and registers the native kernels (depthwise and channel sums) with
  XLA:CPU; returns the target names. Raises `NativeUnavailable` (the same one on every later
  call) when they cannot be."""
  if not enabled():
    raise NativeUnavailable(f'native kernels are off ({ENV}=0)')
  if 'error' in _state:
    raise NativeUnavailable(str(_state['error']))
  if 'lib' not in _state:
    try:
      lib = register(build())
    except (NativeUnavailable, OSError, AttributeError) as err:
      _state['error'] = err
      raise NativeUnavailable(str(err)) from None
    _state['lib'] = lib
  return tuple(TARGETS)


def unavailable_reason() -> str | None:
  """Why the native kernels cannot be used here, or None when they can."""
  try:
    depthwise_targets()
  except NativeUnavailable as err:
    return str(err)
  return None


def available() -> bool:
  """Whether the native depthwise kernels can be used in this process (building them now if
  they have not been)."""
  try:
    depthwise_targets()
  except NativeUnavailable:
    return False
  return True


def stream_above_bytes() -> int:
  """A native forward depthwise pass whose source and output together exceed this many bytes
  (half the last-level cache in Linux's sysfs, else 16 MiB) writes its output with
  non-temporal stores. Raises `NativeUnavailable` where the kernels cannot be used."""
  depthwise_targets()
  fn = _state['lib'].SepnetsStreamAboveBytes
  fn.restype = ctypes.c_int64
  return int(fn())
