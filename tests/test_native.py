"""Building and loading the native kernels (sepnets.native): cache, errors, atomic writes."""

import os
import platform
import subprocess

import jax
import pytest

from sepnets import native


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
  return tmp_path


def test_build_is_cached_by_content(cache):
  lib = native.build()
  assert lib.is_file() and lib.parent.parent == cache
  stamp = lib.stat().st_mtime_ns
  assert native.build() == lib and lib.stat().st_mtime_ns == stamp  # not rebuilt
  assert [p.name for p in lib.parent.iterdir()] == [lib.name]  # no temporary left


def test_no_compiler_is_named(cache, monkeypatch):
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setenv('PATH', str(cache))
  with pytest.raises(native.NativeUnavailable, match='no C\\+\\+ compiler found'):
    native.build()


def test_failed_build_is_named_and_leaves_nothing(cache, monkeypatch):
  monkeypatch.setenv('CXX', 'false')  # runs, fails
  with pytest.raises(native.NativeUnavailable, match='building depthwise.cc, channel_sums.cc failed'):
    native.build()
  assert not any(p.is_file() for p in cache.rglob('*'))


def test_off_switch_is_named(monkeypatch):
  monkeypatch.setenv(native.ENV, '0')
  assert not native.available()
  assert native.unavailable_reason() == f'native kernels are off ({native.ENV}=0)'
  monkeypatch.delenv(native.ENV)
  assert native.available() and native.unavailable_reason() is None
  assert set(native.depthwise_targets()) == set(native.TARGETS)


@pytest.mark.skipif(platform.machine() not in ('x86_64', 'AMD64'), reason='x86 instruction sets')
@pytest.mark.parametrize('march', ['x86-64', 'haswell', 'skylake-avx512'])
def test_source_compiles_for_each_x86_vector_width(march, tmp_path):
  """The kernels are built with -march=native, so a machine without AVX-512 (or AVX) compiles
  other code: each vector width (SSE 4, AVX2 8, AVX-512 16 floats) must build, whatever this
  machine is (a 64-byte vector pinned to one register once failed on AVX2)."""
  flags = [f for f in native.FLAGS if f not in ('-O3', '-march=native', '-shared', '-fPIC')]
  for source in native.SOURCES:
    cmd = [native._compiler(), '-O0', f'-march={march}', *flags, '-I', jax.ffi.include_dir(),
           '-c', str(source), '-o', str(tmp_path / source.with_suffix('.o').name)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
