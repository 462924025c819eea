"""Abstract tracing of a module's forward pass that records every leaf layer call.

Used by the cost model (per-layer tables) and by weight import (layers in call order).
Nothing is computed: the forward pass runs under jax.eval_shape, so modules built with
`nnx.eval_shape` (no weights allocated) work too.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

RECORDED = (nnx.Conv, nnx.Linear, nnx.BatchNorm)
"""The leaf layers that carry parameters and MACs."""


@dataclasses.dataclass(frozen=True)
class LayerCall:
  path: str  # dotted path in the module tree ('' for the root)
  layer: nnx.Module  # the layer object in the traced copy (its static attributes are valid)
  in_shape: tuple[int, ...]
  in_dtype: jnp.dtype
  out_shape: tuple[int, ...]
  out_dtype: jnp.dtype


def path_str(path: Sequence[object]) -> str:
  return '.'.join(str(p) for p in path)


def _call_owners() -> list[type]:
  """RECORDED and every subclass of them that defines its own __call__ (e.g. sepnets'
  BatchNorm): the classes whose __call__ must be wrapped to see every recorded call."""
  owners, todo = [], list(RECORDED)
  while todo:
    cls = todo.pop()
    if '__call__' in vars(cls) and cls not in owners:
      owners.append(cls)
    todo.extend(cls.__subclasses__())
  return owners


@contextlib.contextmanager
def _wrapped_calls(wrap) -> Iterator[None]:
  """While active, the __call__ of every `_call_owners()` class is `wrap(original)` for the
  outermost call on a layer; a subclass's call reaching its parent's (super()) is not
  wrapped twice."""
  originals = {cls: vars(cls)['__call__'] for cls in _call_owners()}
  active: set[int] = set()

  def guarded(original):
    wrapped = wrap(original)

    def call(self, *args, **kwargs):
      if id(self) in active:
        return original(self, *args, **kwargs)
      active.add(id(self))
      try:
        return wrapped(self, *args, **kwargs)
      finally:
        active.discard(id(self))
    return call

  try:
    for cls, original in originals.items():
      cls.__call__ = guarded(original)
    yield
  finally:
    for cls, original in originals.items():
      cls.__call__ = original


def _record_calls(paths: dict[int, str], calls: list[LayerCall]):
  """Records every call of the RECORDED classes while active (as nnx.tabulate does)."""

  def wrap(original):
    def recording_call(self, x, *args, **kwargs):
      y = original(self, x, *args, **kwargs)
      if id(self) in paths:
        calls.append(LayerCall(paths[id(self)], self, tuple(x.shape), jnp.dtype(x.dtype),
                               tuple(y.shape), jnp.dtype(y.dtype)))
      return y
    return recording_call

  return _wrapped_calls(wrap)


_recording = contextvars.ContextVar('sepnets_trace_recording', default=False)


def recording() -> bool:
  """True while `trace_layers` traces a forward pass (layers then run unfused, as written)."""
  return _recording.get()


def trace_layers(module: nnx.Module, input_shape: Sequence[int],
                 dtype=jnp.float32) -> list[LayerCall]:
  """Every Conv/Linear/BatchNorm call of `module(x)` for an input of `input_shape`, in order.

  The module's mode (train/eval) is respected; its state is not changed.
  """
  graphdef, state = nnx.split(module)
  calls: list[LayerCall] = []

  def forward(state, x):
    model = nnx.merge(graphdef, state)
    paths = {id(node): path_str(path) for path, node in nnx.iter_graph(model)
             if isinstance(node, RECORDED)}
    token = _recording.set(True)
    try:
      with _record_calls(paths, calls):
        return model(x)
    finally:
      _recording.reset(token)

  jax.eval_shape(forward, state, jax.ShapeDtypeStruct(tuple(input_shape), dtype))
  return calls


SCOPE_ATTR = 'sepnets_scope'


def tag_layer_scopes(module: nnx.Module) -> nnx.Module:
  """Gives every Conv/Linear/BatchNorm of `module` its path as a static attribute.

  Under `layer_scopes()` the tagged layers run inside `jax.named_scope(path)`, so every HLO
  op they produce (forward and, under autodiff, backward) carries the layer's path in its
  metadata `op_name`: that is how compiled flops are attributed to layers.
  """
  for path, node in nnx.iter_graph(module):
    if isinstance(node, RECORDED):
      setattr(node, SCOPE_ATTR, path_str(path))
  return module


def layer_scopes():
  """While active, tagged layers trace inside a named scope of their path."""

  def wrap(original):
    def scoped_call(self, *args, **kwargs):
      scope = getattr(self, SCOPE_ATTR, None)
      if scope is None:
        return original(self, *args, **kwargs)
      with jax.named_scope(scope):
        return original(self, *args, **kwargs)
    return scoped_call

  return _wrapped_calls(wrap)


def modules_by_path(module: nnx.Module) -> dict[str, nnx.Module]:
  """Path -> sub-module of `module` (the object itself, not a copy)."""
  return {path_str(path): node for path, node in nnx.iter_graph(module)
          if isinstance(node, nnx.Module)}
