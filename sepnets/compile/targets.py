"""Compilation targets: the local CPU and GPU, and TPUs and GPUs compiled for without a device.

Names:
- 'cpu': the local CPU, compiled and timed.
- 'gpu': the local GPU (needs one, and `sepnets[gpu]`), compiled and timed.
- 'tpu:v4', 'tpu:v5e', 'tpu:v5p', 'tpu:v6e' (one chip) or with a topology, 'tpu:v5e:2x2':
  deviceless AOT compilation with libtpu (`pip install 'sepnets[tpu]'`).
- 'gpu:a100', 'gpu:h100', 'gpu:h200': deviceless AOT compilation with the CUDA plugin
  (`pip install 'sepnets[gpu]'`) and a GPU target description (`gpu_targets/*.txtpb`), on a
  machine with no GPU. XLA gives no cost analysis there; `hlo_cost` counts from the HLO.

AOT devices are compile-only, from `jax.experimental.topologies.get_topology_desc`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
from importlib import resources

import jax

TPU_SINGLE_CHIP = {'v4': 'v4:1x1x1', 'v5e': 'v5e:1x1', 'v5p': 'v5p:1x1x1', 'v6e': 'v6e:1x1'}
GPU_CONFIGS = {'a100': 'a100_sxm4_40gb.txtpb', 'h100': 'h100_sxm.txtpb', 'h200': 'h200_sxm.txtpb'}
KNOWN = ('cpu', 'gpu', *(f'tpu:{g}' for g in TPU_SINGLE_CHIP), *(f'gpu:{g}' for g in GPU_CONFIGS))
# HBM per chip (GiB), Google Cloud's TPU documentation: what a compiled program must fit in.
TPU_MEMORY_GIB = {'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}


class TargetUnavailable(RuntimeError):
  """A valid target that cannot be used on this machine (its extra is not installed)."""


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # as given, e.g. 'tpu:v5e'
  platform: str  # 'cpu' | 'gpu' | 'tpu'
  topology: str | None  # e.g. 'v5e:1x1' for TPUs, the target config file for AOT GPUs
  aot: bool  # compile-only devices (nothing runs, nothing is timed)

  def devices(self) -> list[jax.Device]:
    """The target's devices (compile-only for AOT targets)."""
    if not self.aot:
      return jax.devices(self.platform)
    if self.platform == 'gpu':
      return list(_gpu_topology(self.topology).devices)
    return list(_tpu_topology(self.topology).devices)

  @property
  def memory_bytes(self) -> int | None:
    """Memory one device offers a program (None where unknown)."""
    if self.platform == 'tpu':
      return TPU_MEMORY_GIB[self.topology.split(':')[0]] * 2**30
    if self.platform == 'gpu' and self.aot:
      return gpu_config_value(self.topology, 'device_memory_size')
    if self.platform == 'cpu':
      try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
      except (ValueError, OSError, AttributeError):
        return None
    stats = self.devices()[0].memory_stats() or {}
    return stats.get('bytes_limit')

  @property
  def device_kind(self) -> str:
    return self.devices()[0].device_kind


def parse_target(name: str) -> Target:
  """A Target from its name; unknown names raise listing the known ones."""
  parts = str(name).split(':')
  if parts == ['cpu']:
    return Target(name='cpu', platform='cpu', topology=None, aot=False)
  if parts[0] == 'tpu' and len(parts) in (2, 3) and parts[1] in TPU_SINGLE_CHIP:
    topology = TPU_SINGLE_CHIP[parts[1]] if len(parts) == 2 else f'{parts[1]}:{parts[2]}'
    return Target(name=str(name), platform='tpu', topology=topology, aot=True)
  if parts == ['gpu']:
    return Target(name='gpu', platform='gpu', topology=None, aot=False)
  if parts[0] == 'gpu' and len(parts) == 2 and parts[1] in GPU_CONFIGS:
    return Target(name=str(name), platform='gpu', topology=GPU_CONFIGS[parts[1]], aot=True)
  raise ValueError(f'unknown target {name!r}; expected one of {", ".join(KNOWN)} '
                   f"(TPUs also as 'tpu:GEN:TOPOLOGY', e.g. 'tpu:v5e:2x2')")


def check_available(target: Target) -> None:
  """Raises TargetUnavailable with a one-line reason if the target cannot be compiled for."""
  if target.platform == 'gpu' and not target.aot:
    try:
      jax.devices('gpu')
    except RuntimeError:
      raise TargetUnavailable("gpu: no GPU on this machine (deviceless: 'gpu:h100', "
                              "'gpu:a100', 'gpu:h200')") from None
  if target.platform == 'gpu' and target.aot:
    if importlib.util.find_spec('jax_plugins.xla_cuda13') is None:
      raise TargetUnavailable(f"{target.name}: the CUDA plugin is not installed "
                              "(pip install 'sepnets[gpu]')")
    try:
      _gpu_topology(target.topology)
    except Exception as err:
      raise TargetUnavailable(
          f'{target.name}: the CUDA plugin cannot describe {target.topology}: '
          f'{str(err).splitlines()[0]} (on a machine without a GPU set JAX_PLATFORMS=cpu or '
          'JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before jax starts)') from None
  if target.platform == 'tpu':
    if importlib.util.find_spec('libtpu') is None:
      raise TargetUnavailable(f"{target.name}: libtpu is not installed (pip install 'sepnets[tpu]')")
    try:
      _tpu_topology(target.topology)
    except Exception as err:  # libtpu rejects the topology name
      raise TargetUnavailable(f'{target.name}: libtpu cannot describe topology '
                              f'{target.topology!r}: {str(err).splitlines()[0]}') from None


@functools.cache
def _tpu_topology(topology: str):
  # Compile-only use: libtpu otherwise takes a machine-wide lock file, so a second process
  # (a parallel test worker, a second benchmark) could not describe a topology at all.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform='tpu', topology_name=topology)


def gpu_config_text(filename: str) -> str:
  return resources.files('sepnets.compile').joinpath('gpu_targets', filename).read_text()


def gpu_config_value(filename: str, key: str) -> int | None:
  """A numeric field of a GPU target description, e.g. 'device_memory_size'."""
  match = re.search(rf'\b{key}:\s*([\d.]+)', gpu_config_text(filename))
  return None if match is None else int(float(match.group(1)))


@functools.cache
def _gpu_topology(filename: str):
  # Deviceless: no GPU is to be opened, and the plugin's CUDA version checks need a device.
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  os.environ.setdefault('CUDA_VISIBLE_DEVICES', '-1')
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform='cuda', target_config=gpu_config_text(filename),
                                      topology='1x1x1')
