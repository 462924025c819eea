"""Compilation targets: the local CPU, and TPUs compiled for ahead of time without a device.

Names: 'cpu'; 'tpu:v4', 'tpu:v5e', 'tpu:v5p', 'tpu:v6e' (one chip) or with a topology,
'tpu:v5e:2x2'. TPU targets need libtpu (`pip install 'sepnets[tpu]'`); their devices are
compile-only, from `jax.experimental.topologies.get_topology_desc`. GPU targets (deviceless
compilation with the CUDA plugin and a target description) are not implemented yet.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import jax

TPU_SINGLE_CHIP = {'v4': 'v4:1x1x1', 'v5e': 'v5e:1x1', 'v5p': 'v5p:1x1x1', 'v6e': 'v6e:1x1'}
KNOWN = ('cpu', *(f'tpu:{g}' for g in TPU_SINGLE_CHIP))


class TargetUnavailable(RuntimeError):
  """A valid target that cannot be used on this machine (its extra is not installed)."""


@dataclasses.dataclass(frozen=True)
class Target:
  name: str  # as given, e.g. 'tpu:v5e'
  platform: str  # 'cpu' | 'tpu'
  topology: str | None  # e.g. 'v5e:1x1' for TPUs
  aot: bool  # compile-only devices (nothing runs, nothing is timed)

  def devices(self) -> list[jax.Device]:
    """The target's devices (compile-only for AOT targets)."""
    if self.platform == 'cpu':
      return jax.devices('cpu')
    return list(_tpu_topology(self.topology).devices)

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
  if parts[0] == 'gpu':
    raise TargetUnavailable(f'GPU targets ({name!r}) are not implemented yet')
  raise ValueError(f'unknown target {name!r}; expected one of {", ".join(KNOWN)} '
                   f"(TPUs also as 'tpu:GEN:TOPOLOGY', e.g. 'tpu:v5e:2x2')")


def check_available(target: Target) -> None:
  """Raises TargetUnavailable with a one-line reason if the target cannot be compiled for."""
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
