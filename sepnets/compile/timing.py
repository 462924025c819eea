"""Wall-clock timing of compiled functions: warm-up, block_until_ready, median of N; several
calls interleaved round by round (`side_by_side`)."""

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


def side_by_side(calls: dict[str, Callable[[], Any]], *, warmup: int, repeats: int,
                 pause_s: float = 0.02, lead_in: int = 0) -> dict[str, Timing]:
  """Times each of `calls` (each returns once its work is done), interleaved: every round runs
  each once, in alternating order, so a slow spell of a shared machine falls on all of them
  and none always runs after the same one. {name: Timing}.

  Two ways to keep the libraries out of each other's way (OpenMP's and XLA's pools busy-wait
  a while after their work, and would share the cores with the next call):
  - `pause_s`, untimed, before each call: the other library's threads have stopped spinning,
    and the call starts from idle cores (a request that comes now and then);
  - `lead_in` untimed calls of the same function right before each timed one: the timed call
    runs back to back with its own previous call (steady state, as a loop over batches).
  """
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}')
  for fn in calls.values():
    for _ in range(warmup):
      fn()
  samples: dict[str, list[float]] = {name: [] for name in calls}
  names = list(calls)
  for i in range(repeats):
    for name in (names if i % 2 == 0 else names[::-1]):
      time.sleep(pause_s)
      for _ in range(lead_in):
        calls[name]()
      start = time.perf_counter()
      calls[name]()
      samples[name].append(time.perf_counter() - start)
  return {name: Timing(median_s=statistics.median(v), min_s=min(v), repeats=repeats)
          for name, v in samples.items()}
