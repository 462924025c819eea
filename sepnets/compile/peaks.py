"""Peak FLOP/s and copy bandwidth measured on the local device: the roofline's two limits.

- Peak FLOP/s: the best of a few square fp32 (and bf16) matmuls.
- Copy bandwidth: `y = x + 1` over arrays of a given working-set size (one read, one write
  per element: 2 x size bytes moved), since a memory-bound op's limit depends on whether its
  working set sits in cache. `bandwidth_for(bytes)` picks the measurement closest in size.

Peaks are the fastest of many repeats, not the median: a limit is what the machine can do,
and a single slow sample (page faults on a fresh output buffer, a busy core) must not lower it.

A workload's roofline time is max(flops / peak, bytes / bandwidth); its roofline fraction is
that time over the measured one (1.0 = at the limit).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sepnets.compile.timing import time_call, time_compiled

COPY_SIZES_MIB = (1, 8, 64, 256)


@dataclasses.dataclass(frozen=True)
class Peaks:
  platform: str
  device_kind: str
  flops_per_s: dict[str, float]  # dtype -> best matmul FLOP/s
  copy_bytes_per_s: dict[int, float]  # working-set bytes -> copy bandwidth (bytes/s)

  def bandwidth_for(self, working_set_bytes: float) -> float:
    """Copy bandwidth measured at the working-set size closest (in log scale) to the given one."""
    size = min(self.copy_bytes_per_s,
               key=lambda s: abs(math.log(max(working_set_bytes, 1)) - math.log(s)))
    return self.copy_bytes_per_s[size]

  def roofline_seconds(self, flops: float, nbytes: float, working_set: float,
                       dtype: str = 'float32') -> float:
    peak = self.flops_per_s.get(dtype) or max(self.flops_per_s.values())
    return max(flops / peak, nbytes / self.bandwidth_for(working_set))

  def to_json(self) -> dict:
    return dict(platform=self.platform, device_kind=self.device_kind,
                gflops_per_s={k: v / 1e9 for k, v in self.flops_per_s.items()},
                copy_gb_per_s={str(k): v / 1e9 for k, v in self.copy_bytes_per_s.items()})


def measure_peaks(device: jax.Device, *, matmul_sizes: tuple[int, ...] | None = None,
                  copy_sizes_mib: tuple[int, ...] = COPY_SIZES_MIB,
                  repeats: int = 20) -> Peaks:
  """Measures matmul FLOP/s and copy bandwidth on `device`."""
  if matmul_sizes is None:
    matmul_sizes = (512, 1024, 2048) if device.platform == 'cpu' else (4096, 8192)
  flops: dict[str, float] = {}
  dtypes = ('float32',) if device.platform == 'cpu' else ('float32', 'bfloat16')
  for dtype in dtypes:
    best = 0.0
    for n in matmul_sizes:
      a = jax.device_put(jnp.ones((n, n), dtype), device)
      matmul = jax.jit(jnp.matmul).lower(a, a).compile()
      seconds = time_compiled(matmul, a, a, repeats=repeats).min_s
      best = max(best, 2 * n**3 / seconds)
    flops[dtype] = best
  copy = {mib * 2**20: measure_copy(device, mib * 2**20, repeats=repeats)
          for mib in copy_sizes_mib}
  return Peaks(device.platform, device.device_kind, flops, copy)


def copy_call(device: jax.Device, size_bytes: int) -> tuple[Callable[[], Any], int]:
  """`y = x + 1` over `size_bytes` of float32 on `device`, compiled: a call that returns once
  it is done, and the bytes one call moves (read + write)."""
  x = jax.device_put(jnp.zeros((max(int(size_bytes) // 4, 1),), jnp.float32), device)
  add = jax.jit(lambda v: v + 1).lower(x).compile()
  return lambda: jax.block_until_ready(add(x)), 2 * x.size * 4


def measure_copy(device: jax.Device, size_bytes: int, *, repeats: int = 20) -> float:
  """Copy bandwidth (bytes moved per second: read + write) of `y = x + 1` over `size_bytes`
  of float32 on `device`, the fastest of `repeats`."""
  call, moved = copy_call(device, size_bytes)
  return moved / time_call(call, repeats=repeats).min_s
