"""XLA cost and memory analysis of a lowered and compiled function.

The version-sensitive calls (`cost_analysis()` returned a list of dicts in older jax and a
dict now; `memory_analysis()` may be None on some backends) live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class CompiledStats:
  """What the compiler reports for one compiled function (None where it reports nothing)."""
  flops: float | None
  bytes_accessed: float | None
  transcendentals: float | None
  optimal_seconds: float | None
  argument_bytes: int | None
  output_bytes: int | None
  temp_bytes: int | None
  generated_code_bytes: int | None
  compile_seconds: float

  @property
  def intensity(self) -> float | None:
    """Arithmetic intensity: flops per byte accessed."""
    if not self.flops or not self.bytes_accessed:
      return None
    return self.flops / self.bytes_accessed


def cost_dict(compiled: jax.stages.Compiled) -> dict[str, float]:
  """The compiled function's cost analysis as one dict ({} when the backend gives none)."""
  cost = compiled.cost_analysis()
  if cost is None:
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost)


def memory_figures(compiled: jax.stages.Compiled) -> dict[str, int | None]:
  names = {'argument_bytes': 'argument_size_in_bytes', 'output_bytes': 'output_size_in_bytes',
           'temp_bytes': 'temp_size_in_bytes', 'generated_code_bytes': 'generated_code_size_in_bytes'}
  mem = compiled.memory_analysis()
  return {ours: (None if mem is None else int(getattr(mem, theirs))) for ours, theirs in names.items()}


def lower_and_compile(fn: Callable[..., Any], *args: Any) -> tuple[jax.stages.Compiled, float]:
  """jit(fn).lower(*args).compile(); args may be arrays or jax.ShapeDtypeStruct."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def stats_of(compiled: jax.stages.Compiled, compile_seconds: float) -> CompiledStats:
  cost = cost_dict(compiled)

  def get(key):
    return float(cost[key]) if key in cost else None

  return CompiledStats(flops=get('flops'), bytes_accessed=get('bytes accessed'),
                       transcendentals=get('transcendentals'),
                       optimal_seconds=get('optimal_seconds'),
                       compile_seconds=compile_seconds, **memory_figures(compiled))


def compile_stats(fn: Callable[..., Any], *args: Any) -> CompiledStats:
  """Lowers and compiles `fn` for `args` and returns the compiler's cost and memory figures."""
  return stats_of(*lower_and_compile(fn, *args))
