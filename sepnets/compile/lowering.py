"""Lowering and compiling workloads for a target, abstractly (no weights allocated).

A workload is a function and abstract arguments (jax.ShapeDtypeStruct pytrees). For an AOT
target the arguments are placed on its compile-only device; the result holds the StableHLO
and optimized HLO texts, the compiler's cost and memory figures and an op census.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sepnets.compile.analysis import CompiledStats, stats_of
from sepnets.compile.census import Census, hlo_census
from sepnets.compile.targets import Target, check_available
from sepnets.registry import create_model, get_model_def
from sepnets.summary import abstract_model
from sepnets.trace import layer_scopes, tag_layer_scopes
from sepnets.train.steps import make_eval_step, make_train_step

MODES = ('infer', 'train')


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  fn: Callable[..., Any]
  args: tuple[Any, ...]  # pytrees of jax.ShapeDtypeStruct
  meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CompileResult:
  workload: str
  target: str
  device_kind: str
  stablehlo: str
  hlo: str
  stats: CompiledStats
  census: Census
  lowering_seconds: float
  compiled: jax.stages.Compiled = dataclasses.field(repr=False, compare=False)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def model_workload(name: str, *, mode: str = 'infer', batch: int = 1,
                   image_size: int | None = None, dtype: str = 'float32', concrete: bool = False,
                   **overrides: Any) -> Workload:
  """Eval forward ('infer') or a whole SGD-momentum train step ('train') of a zoo model.

  With concrete=False the arguments are abstract (nothing allocated: for lowering); with
  concrete=True they are real arrays of the same structure (for running and timing).
  """
  if mode not in MODES:
    raise ValueError(f'unknown mode {mode!r}; expected one of {MODES}')
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f'batch must be a positive integer, got {batch!r}')
  size = image_size or get_model_def(name).default_image_size
  compute = None if dtype == 'float32' else dtype
  model_mode = 'train' if mode == 'train' else 'eval'
  if concrete:
    model = create_model(name, rngs=nnx.Rngs(0), dtype=compute, **overrides)
    getattr(model, model_mode)()
  else:
    model = abstract_model(name, mode=model_mode, dtype=compute, **overrides)
  tag_layer_scopes(model)
  shape = (batch, size, size, model.in_chans)
  keep = (lambda tree: tree) if concrete else _abstract
  images = (jax.random.normal(jax.random.key(0), shape, jnp.float32) if concrete
            else jax.ShapeDtypeStruct(shape, jnp.float32))
  meta = dict(model=name, mode=mode, batch=batch, image_size=size, dtype=dtype,
              options=dict(overrides))
  if mode == 'infer':
    graphdef, state = nnx.split(model)
    return Workload(f'{name}/infer', make_eval_step(graphdef), (keep(state), images), meta)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.sgd(0.1, momentum=0.9)
  opt_state = (optimizer.init(params) if concrete
               else jax.eval_shape(optimizer.init, _abstract(params)))
  labels = (jnp.arange(batch, dtype=jnp.int32) % 10 if concrete
            else jax.ShapeDtypeStruct((batch,), jnp.int32))
  args = (keep(params), keep(rest), opt_state, images, labels)
  return Workload(f'{name}/train', make_train_step(graphdef, optimizer), args, meta)


def _place(args: tuple[Any, ...], target: Target) -> tuple[Any, ...]:
  """On an AOT target, every argument replicated on the target's first device."""
  if not target.aot:
    return args
  mesh = Mesh(np.array(target.devices()[:1]), ('device',))
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), args)


def compile_workload(workload: Workload, target: Target) -> CompileResult:
  """Lowers and compiles `workload` for `target`."""
  check_available(target)
  start = time.perf_counter()
  with layer_scopes():
    lowered = jax.jit(workload.fn).lower(*_place(workload.args, target))
  lowering_seconds = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  hlo = compiled.as_text()
  return CompileResult(workload=workload.name, target=target.name,
                       device_kind=target.device_kind, stablehlo=lowered.as_text(), hlo=hlo,
                       stats=stats_of(compiled, compile_seconds), census=hlo_census(hlo),
                       lowering_seconds=lowering_seconds, compiled=compiled)
