"""Checkpoints with orbax: the whole TrainState plus JSON metadata, written atomically.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and no half-written step is ever read.
The state is stored as its flattened leaves (PRNG keys as their raw key data), with each leaf's
path, shape and dtype in the metadata, and restored into the structure and shardings of a freshly
initialised state; a checkpoint whose leaves do not match (another model or config) or that
cannot be read raises CheckpointError naming it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored; the message names it and says why."""


def _is_key(x: Any) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaves(state: Any) -> tuple[dict[str, Any], list[str]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  arrays = {f'{i:05d}': (jax.random.key_data(x) if _is_key(x) else x)
            for i, (_, x) in enumerate(flat)}
  paths = [f'{jax.tree_util.keystr(p)} {tuple(int(d) for d in np.shape(a))} {np.dtype(a.dtype)}'
           for (p, _), a in zip(flat, arrays.values())]
  return arrays, paths


class Checkpoints:
  """Saves and restores TrainStates under `directory` (one subdirectory per step)."""

  def __init__(self, directory: str | os.PathLike, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    arrays, paths = _leaves(state)
    meta = {**meta, 'step': int(step), 'leaves': paths}
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The state at `step` (default: the latest) in `template`'s structure and shardings."""
    step = self.latest() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory!r}')
    where = os.path.join(self.directory, str(step))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception as error:  # orbax raises many types for unreadable files
      raise CheckpointError(f'checkpoint {where!r} is unreadable ({type(error).__name__}: '
                            f'{error}); delete it to resume from an earlier one '
                            f'({self.steps()})') from error
    template_arrays, paths = _leaves(template)
    if meta.get('leaves') != paths:
      theirs = list(meta.get('leaves') or ())
      diff = [f'{a} here, {b} there' for a, b in zip(paths, theirs) if a != b][:3]
      if len(theirs) != len(paths):
        diff.insert(0, f'{len(paths)} entries here, {len(theirs)} there')
      raise CheckpointError(f'checkpoint {where!r} does not match this model and config '
                            f'({"; ".join(diff)}); use another --workdir')
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, 'sharding', None))
                for k, v in template_arrays.items()}
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
    except Exception as error:
      raise CheckpointError(f'checkpoint {where!r} is unreadable or does not match this model '
                            f'({type(error).__name__}: {error}); delete it to resume from an '
                            f'earlier one ({self.steps()})') from error
    flat, treedef = jax.tree_util.tree_flatten(template)
    leaves = []
    for i, x in enumerate(flat):
      value = restored[f'{i:05d}']
      leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(x))
                    if _is_key(x) else value)
    return jax.tree_util.tree_unflatten(treedef, leaves), meta

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
