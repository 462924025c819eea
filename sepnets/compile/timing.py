"""Wall-clock timing of compiled functions: warm-up, block_until_ready, median of N."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  median_s: float
  min_s: float
  repeats: int


def time_call(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10) -> Timing:
  """Times `fn()`, which must return only once its work is done (any library's)."""
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}')
  for _ in range(warmup):
    fn()
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    samples.append(time.perf_counter() - start)
  return Timing(median_s=statistics.median(samples), min_s=min(samples), repeats=repeats)


def time_compiled(fn: Callable[..., Any], *args: Any, warmup: int = 2, repeats: int = 10) -> Timing:
  """Times `fn(*args)` (already compiled or jitted) until its outputs are ready."""
  return time_call(lambda: jax.block_until_ready(fn(*args)), warmup=warmup, repeats=repeats)
