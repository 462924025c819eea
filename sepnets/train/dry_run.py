"""`sepnets train --dry-run --target T`: will this config's train step fit, before renting T?

Builds the model abstractly (no weights), shards the config's global batch over all of the
target's devices (params replicated, as in training) and compiles the exact train step the loop
runs — through the benchmark suite's AOT targets, so `tpu:v5e:2x2` compiles for a 4-chip slice
on a machine with no TPU — then reports the compiler's per-device memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sepnets.compile.analysis import memory_figures
from sepnets.compile.targets import check_available, parse_target
from sepnets.registry import create_model
from sepnets.train.loop import check_model, model_options
from sepnets.train.optim import make_optimizer, make_schedule
from sepnets.train.state import TrainState, empty_metrics, make_steps


def dry_run(config, *, target: str = 'cpu') -> dict[str, Any]:
  """Compiles the sharded train step for `target`; returns per-device memory and whether it fits."""
  t = parse_target(target)
  check_available(t)
  check_model(config)
  c = config
  devices = t.devices()
  if c.train.batch_size % len(devices):
    raise ValueError(f'config key train.batch_size = {c.train.batch_size} is not divisible by '
                     f"the {len(devices)} devices of {target}")
  channels = 1 if c.data.name in ('mnist', 'fashion_mnist') else c.data.channels
  classes = 10 if c.data.name in ('cifar10', 'mnist', 'fashion_mnist') else c.data.num_classes
  model = nnx.eval_shape(lambda: create_model(c.model.name, rngs=nnx.Rngs(0), num_classes=classes,
                                              in_chans=channels, **model_options(c)))
  optimizer = make_optimizer(c, make_schedule(c, max(c.train.steps, 1)))
  steps = make_steps(model, optimizer, label_smoothing=c.train.label_smoothing,
                     ema_decay=c.train.ema_decay)
  model.train()
  _, params, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, stats=stats,
                     other=other, opt_state=jax.eval_shape(optimizer.init, params),
                     ema={'params': params, 'stats': stats} if c.train.ema_decay else None,
                     metrics=jax.eval_shape(empty_metrics))
  mesh = Mesh(np.asarray(devices), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded = NamedSharding(mesh, PartitionSpec('data'))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
  size = c.data.image_size
  images = jax.ShapeDtypeStruct((c.train.batch_size, size, size, channels), jnp.float32,
                                sharding=sharded)
  labels = jax.ShapeDtypeStruct((c.train.batch_size,), jnp.int32, sharding=sharded)
  compiled = jax.jit(steps.train, out_shardings=replicated, donate_argnums=0).lower(
      state, images, labels).compile()
  memory = memory_figures(compiled)
  known = [v for v in (memory['argument_bytes'], memory['output_bytes'], memory['temp_bytes'])
           if v is not None]
  # donated state: outputs alias the arguments, so arguments + temporaries is the footprint
  per_device = (memory['argument_bytes'] or 0) + (memory['temp_bytes'] or 0) if known else None
  limit = t.memory_bytes
  return {'target': target, 'device_kind': t.device_kind, 'devices': len(devices),
          'model': c.model.name, 'global_batch': c.train.batch_size,
          'per_device_batch': c.train.batch_size // len(devices), 'image_size': size,
          'dtype': c.model.dtype, **memory, 'per_device_bytes': per_device,
          'device_memory_bytes': limit,
          'fits': None if per_device is None or limit is None else per_device <= limit}


def format_dry_run(r: dict[str, Any]) -> str:
  gib = lambda b: '-' if b is None else f'{b / 2**30:.2f} GiB'  # noqa: E731
  verdict = {True: 'fits', False: 'DOES NOT FIT', None: 'unknown (no memory figure)'}[r['fits']]
  return '\n'.join([
      f"{r['model']} train step on {r['target']} ({r['devices']} x {r['device_kind']}): global "
      f"batch {r['global_batch']} = {r['per_device_batch']} per device, "
      f"{r['image_size']}x{r['image_size']}, {r['dtype']}",
      f"per device: arguments {gib(r['argument_bytes'])}, temporaries {gib(r['temp_bytes'])}, "
      f"outputs {gib(r['output_bytes'])} (aliasing the donated state), code "
      f"{gib(r['generated_code_bytes'])}",
      f"needs {gib(r['per_device_bytes'])} of {gib(r['device_memory_bytes'])} per device: {verdict}",
  ])
