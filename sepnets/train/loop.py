"""`train_and_evaluate(config, workdir)`: the training loop, resumable and data parallel.

Layout of a workdir: `config.json` (the resolved config), `checkpoints/<step>/` (orbax),
`metrics.jsonl` (one record per log interval and per evaluation) and `summary.json` (the final
metrics). Running the same command again resumes from the latest checkpoint; on CPU with the
same seed the final metrics equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from sepnets.files import atomic_write_text
from sepnets.progress import ProgressBar
from sepnets.registry import create_model, get_model_def
from sepnets.train.checkpoint import Checkpoints
from sepnets.train.datasets import Dataset, load_dataset
from sepnets.train.optim import make_optimizer, make_schedule
from sepnets.train.pipeline import Augment, Pipeline
from sepnets.train.state import Steps, TrainState, empty_metrics, make_steps


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def model_options(config) -> dict[str, Any]:
  """create_model overrides from config.model (num_classes and in_chans come from the data)."""
  m = config.model
  valid = get_model_def(m.name).options
  options = {'stem_stride': m.stem_stride, 'strategy': m.strategy, 'padding': m.padding,
             'dtype': None if m.dtype == 'float32' else m.dtype}
  if m.dropout >= 0:
    options['dropout'] = m.dropout
  if m.drop_path_rate >= 0:
    options['drop_path_rate'] = m.drop_path_rate
  if m.width != 1.0:
    if 'width' not in valid:
      raise ValueError(f'config key model.width: model {m.name!r} has no width option')
    options['width'] = m.width
  return options


def check_model(config) -> None:
  """Builds the model abstractly (no weights): a bad model config fails before any data loads."""
  options = model_options(config)
  nnx.eval_shape(lambda: create_model(config.model.name, rngs=nnx.Rngs(0),
                                      num_classes=config.data.num_classes,
                                      in_chans=config.data.channels, **options))


def augmentation(config, train: bool) -> Augment:
  """The data transform of the config: augmented for training, plain for evaluation."""
  d = config.data
  return Augment(image_size=d.image_size, mean=tuple(d.mean), std=tuple(d.std),
                 crop_padding=d.crop_padding if train else 0, flip=d.flip and train,
                 random_resized_crop=d.random_resized_crop and train)


def _channel_stats(config, dataset: Dataset) -> None:
  for key in ('mean', 'std'):
    values = config.data[key]
    if len(values) not in (1, dataset.channels):
      raise ValueError(f'config key data.{key} has {len(values)} values; the {dataset.name} '
                       f'images have {dataset.channels} channels')


class Run:
  """Everything a training or evaluation run needs, built from a config."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    check_model(config)
    self.dataset = load_dataset(config)
    _channel_stats(config, self.dataset)
    c = config
    self.model = create_model(c.model.name, rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1),
                              num_classes=self.dataset.num_classes,
                              in_chans=self.dataset.channels, **model_options(c))
    devices = jax.devices()
    if c.train.devices > len(devices):
      raise ValueError(f'config key train.devices = {c.train.devices}, but only {len(devices)} '
                       f'devices are present')
    devices = devices[:c.train.devices or len(devices)]
    self.devices = devices
    self.mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.sharded = NamedSharding(self.mesh, PartitionSpec('data'))
    for key in ('batch_size', 'eval_batch_size'):
      if c.train[key] % len(devices):
        raise ValueError(f'config key train.{key} = {c.train[key]} is not divisible by the '
                         f'{len(devices)} devices')
    self.train_data = Pipeline(self.dataset.train, augmentation(c, True),
                               batch_size=c.train.batch_size, seed=c.seed, train=True,
                               workers=c.data.workers)
    self.eval_data = Pipeline(self.dataset.eval, augmentation(c, False),
                              batch_size=c.train.eval_batch_size, seed=c.seed, train=False,
                              workers=c.data.workers)
    self.quant_info = None
    if c.quant.enabled:  # quantization-aware training starts from a float run
      from sepnets.quant.qat import prepare  # quant builds on train: imported only here
      saved = os.path.join(workdir, 'checkpoints')
      resuming = os.path.isdir(saved) and any(d.isdigit() for d in os.listdir(saved))
      self.quant_info = prepare(self, resuming=resuming)
    self.total_steps = c.train.steps or max(
        1, math.ceil(c.train.epochs * self.train_data.steps_per_epoch))
    self.schedule = make_schedule(c, self.total_steps)
    self.steps: Steps = make_steps(self.model, make_optimizer(c, self.schedule),
                                   label_smoothing=c.train.label_smoothing,
                                   ema_decay=c.train.ema_decay)
    repl = self.replicated
    self.init = jax.jit(self.steps.init, out_shardings=repl)
    self.train_step = jax.jit(self.steps.train, in_shardings=(repl, self.sharded, self.sharded),
                              out_shardings=repl, donate_argnums=0)
    self.eval_step = jax.jit(self.steps.evaluate, in_shardings=(
        repl, repl, repl, self.sharded, self.sharded, self.sharded), out_shardings=repl)
    self.checkpoints = Checkpoints(os.path.join(workdir, 'checkpoints'),
                                   keep=c.train.keep_checkpoints)

  def to_device(self, array: np.ndarray) -> jax.Array:
    """A host batch -> a global array sharded over devices (this process's slice of it)."""
    per_process = array.shape[0] // jax.process_count()
    start = jax.process_index() * per_process
    return jax.make_array_from_process_local_data(self.sharded, array[start:start + per_process],
                                                  array.shape)

  def evaluate(self, params, stats, other) -> dict[str, float]:
    totals = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}
    with self.eval_data.iterate(prefetch=self.config.data.prefetch) as batches:
      for batch in batches:
        out = self.eval_step(params, stats, other, self.to_device(batch.images),
                             self.to_device(batch.labels), self.to_device(batch.mask))
        for key, value in jax.device_get(out).items():
          totals[key] += float(value)
    return {'loss': totals['loss'] / totals['count'],
            'accuracy': totals['correct'] / totals['count'], 'examples': int(totals['count'])}

  def evaluate_state(self, state: TrainState) -> dict[str, Any]:
    result = {'eval': self.evaluate(state.params, state.stats, state.other)}
    if state.ema is not None:
      result['eval_ema'] = self.evaluate(state.ema['params'], state.ema['stats'], state.other)
    return result

  def meta(self) -> dict[str, Any]:
    return {'config': self.config.to_dict(), 'total_steps': self.total_steps,
            'model': self.config.model.name, 'jax': jax.__version__}

  def close(self) -> None:
    self.checkpoints.close()
    self.train_data.close()
    self.eval_data.close()


class Metrics:
  """metrics.jsonl: appended and flushed per record; on resume, records past the restored step
  are dropped so the file reads as one uninterrupted run. Only the lead process of a multi-host
  run writes (`lead=False` reads the resume point and writes nothing)."""

  def __init__(self, path: str, resume_step: int, lead: bool = True):
    self.path = path
    self.last_train: dict[str, Any] = {}
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:  # a line cut by a kill
            continue
          if record.get('step', 0) <= resume_step:
            kept.append(json.dumps(record))
            if record.get('split') == 'train':
              self.last_train = record
    self._file = None
    if lead:
      atomic_write_text(path, ''.join(k + '\n' for k in kept))
      self._file = open(path, 'a')

  def write(self, record: dict[str, Any]) -> None:
    if self._file:
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()


def _check_finite(state: TrainState, checkpoints: Checkpoints) -> None:
  first_bad = int(jax.device_get(state.metrics['first_bad']))
  if first_bad >= 0:
    last = checkpoints.latest()
    kept = (f'the last good checkpoint, step {last}, is kept in {checkpoints.directory}'
            if last is not None else 'no checkpoint had been written yet')
    raise TrainingDiverged(f'the training loss became NaN or infinite at step {first_bad + 1}; '
                           f'stopped. {kept}. Lower optimizer.learning_rate or set '
                           f'train.grad_clip_norm.')


def train_and_evaluate(config, workdir: str, *, progress: bool = True) -> dict[str, Any]:
  """Trains per `config` in `workdir` (resuming from its latest checkpoint); returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  run = Run(config, workdir)
  c = config
  try:
    state = run.init()
    start = 0
    if run.checkpoints.latest() is not None:
      state, _ = run.checkpoints.restore(state)
      start = int(jax.device_get(state.step))
      print(f'resuming from step {start} ({run.checkpoints.directory})', file=sys.stderr)
    lead = jax.process_index() == 0  # of a multi-host run: the one that writes files
    if lead:
      atomic_write_text(os.path.join(workdir, 'config.json'),
                        c.to_json_best_effort(indent=2) + '\n')
    metrics = Metrics(os.path.join(workdir, 'metrics.jsonl'), start, lead)
    bar = ProgressBar(run.total_steps, initial=start) if progress and lead else None
    if bar:
      bar.note(f'{c.model.name} on {run.dataset.name}: {run.total_steps} steps of '
               f'{c.train.batch_size} over {len(run.devices)} device(s), '
               f'{run.train_data.steps_per_epoch} steps per epoch')
    t0, n0 = time.perf_counter(), start
    last_train = metrics.last_train
    try:
      with run.train_data.iterate(start, run.total_steps, prefetch=c.data.prefetch) as batches:
        for batch in batches:
          state = run.train_step(state, run.to_device(batch.images), run.to_device(batch.labels))
          step = batch.step + 1
          if step % c.train.log_every == 0 or step == run.total_steps:
            _check_finite(state, run.checkpoints)
            m = jax.device_get(state.metrics)
            elapsed = time.perf_counter() - t0
            last_train = {
                'step': step, 'split': 'train', 'epoch': step / run.train_data.steps_per_epoch,
                'loss': float(m['loss'] / m['count']), 'accuracy': float(m['correct'] / m['count']),
                'learning_rate': float(run.schedule(step - 1)),
                'images_per_s': (step - n0) * c.train.batch_size / elapsed,
                'step_time_ms': 1000 * elapsed / (step - n0)}
            metrics.write(last_train)
            state.metrics = jax.device_put(empty_metrics(), run.replicated)
            t0, n0 = time.perf_counter(), step
            if bar:
              bar.update(step, f'loss {last_train["loss"]:.4f} acc {last_train["accuracy"]:.3f} '
                         f'lr {last_train["learning_rate"]:.4g} '
                         f'{last_train["images_per_s"]:.0f} img/s')
          if c.train.eval_every and step % c.train.eval_every == 0 and step < run.total_steps:
            metrics.write({'step': step, 'split': 'eval', **_flat(run.evaluate_state(state))})
          if (c.train.checkpoint_every and step % c.train.checkpoint_every == 0) \
              or step == run.total_steps:
            _check_finite(state, run.checkpoints)
            run.checkpoints.save(step, state, run.meta())
    finally:
      if bar:
        bar.close()
    run.checkpoints.wait()
    final = run.evaluate_state(state)
    step = int(jax.device_get(state.step))
    metrics.write({'step': step, 'split': 'eval', **_flat(final)})
    metrics.close()
    summary = {'model': c.model.name, 'dataset': run.dataset.name, 'steps': step,
               'train': {k: last_train[k] for k in ('loss', 'accuracy')} if last_train else None,
               **final, 'devices': len(run.devices), 'workdir': os.path.abspath(workdir)}
    if run.quant_info is not None:
      summary['quant'] = {**run.quant_info, **c.quant.to_dict()}
    if lead:
      atomic_write_text(os.path.join(workdir, 'summary.json'),
                        json.dumps(summary, indent=2) + '\n')
    return summary
  finally:
    run.close()


def _flat(result: dict[str, dict[str, Any]]) -> dict[str, Any]:
  return {f'{name}_{key}': value for name, part in result.items() for key, value in part.items()}


def open_checkpoint(config, workdir: str, step: int | None = None) -> tuple[Run, TrainState]:
  """A Run of `config` and the state of `workdir`'s latest (or given) checkpoint; the caller
  closes the run."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoint in {directory!r}; train first')
  run = Run(config, workdir)
  try:
    if run.checkpoints.latest() is None:
      raise FileNotFoundError(f'no checkpoint in {run.checkpoints.directory!r}; train first')
    if step is not None and step not in run.checkpoints.steps():
      raise FileNotFoundError(f'no checkpoint of step {step} in {run.checkpoints.directory!r}; '
                              f'there are {run.checkpoints.steps()}')
    state, _ = run.checkpoints.restore(run.init(), step)
    return run, state
  except BaseException:
    run.close()
    raise


def evaluate(config, workdir: str, *, step: int | None = None) -> dict[str, Any]:
  """Evaluates the latest (or a given) checkpoint in `workdir`, plain and EMA weights."""
  run, state = open_checkpoint(config, workdir, step)
  try:
    result = {'step': int(jax.device_get(state.step)), **run.evaluate_state(state)}
    atomic_write_text(os.path.join(workdir, 'eval.json'), json.dumps(result, indent=2) + '\n')
    return result
  finally:
    run.close()
