"""sepnets next to PyTorch (and Keras 3 on JAX) on identical architectures, timed in one run.

Workloads, NHWC at one image size: inference at each batch size (eval mode; PyTorch
channels_last under `torch.inference_mode`) and the train step (train-mode forward, backward
and an SGD-momentum update, dropout and drop-path on as each library defines the model) at
the train batch. In fp32, or in bf16 mixed precision as each library spells it (parameters
and optimizer state fp32, compute bf16): sepnets' `dtype=bfloat16`, `torch.autocast` and
Keras' `mixed_bfloat16` policy; the loss is taken in fp32 in all three. PyTorch runs where
JAX runs: on the CPU, or on CUDA when JAX's backend is the GPU (cuDNN's autotuner on, as
XLA's is by default; each timed call waits for the device). The sepnets model gets the
PyTorch model's weights through the strict weight import, so the two compute the same
function: the eval logits' difference is reported next to the times. Keras' applications are
the same architectures by name (its own definitions and weights), timed through
`predict_on_batch` / `train_on_batch` with XLA compilation.

Each time is the median of `repeats` calls after `warmup` calls, or of more where a call is
short: as many as take `min_time_s` (at most MAX_REPEATS), since five samples of a 10 ms call
are mostly noise on a shared machine. sepnets' and PyTorch's calls are interleaved, one of
each per round in alternating order, so a slow spell of a shared machine falls on both sides
of a ratio; Keras, far slower, is timed after them. A ratio is sepnets / peer (below 1.0:
sepnets is faster). Needs the `torch` extra (torch, torchvision, keras).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sepnets.compile.metadata import run_metadata
from sepnets.compile.timing import Timing, side_by_side, time_call
from sepnets.registry import create_model
from sepnets.runtime import cpu_compiler_options
from sepnets.train.steps import compile_predictor, make_train_step

MODELS = ('mobilenet_v2', 'mobilenet_v3_large', 'efficientnet_b0')
KERAS_APPLICATIONS = {'mobilenet_v2': 'MobileNetV2', 'mobilenet_v3_large': 'MobileNetV3Large',
                      'efficientnet_b0': 'EfficientNetB0'}
PEERS = ('torch', 'keras')
DTYPES = ('float32', 'bfloat16')
MAX_REPEATS = 200
LEARNING_RATE, MOMENTUM = 0.01, 0.9


@dataclasses.dataclass(frozen=True)
class PeersConfig:
  models: tuple[str, ...] = MODELS
  image_size: int = 224
  infer_batches: tuple[int, ...] = (1, 32)
  train_batch: int = 32  # 0: no train step
  peers: tuple[str, ...] = PEERS
  strategy: str = 'auto'  # sepnets' depthwise strategy
  warmup: int = 2
  repeats: int = 5
  seed: int = 0
  pause_s: float = 0.02  # untimed, before each timed call (`side_by_side`)
  dtype: str = 'float32'  # or 'bfloat16': mixed precision (fp32 parameters, bf16 compute)
  min_time_s: float = 1.0  # time at least this many seconds of calls (up to MAX_REPEATS)

  def __post_init__(self):
    for name in self.models:
      if name not in KERAS_APPLICATIONS:
        raise ValueError(f'no peer definition for {name!r}; the peers benchmark covers '
                         f'{", ".join(MODELS)}')
    for peer in self.peers:
      if peer not in PEERS:
        raise ValueError(f'unknown peer {peer!r}; expected some of {", ".join(PEERS)}')
    if self.dtype not in DTYPES:
      raise ValueError(f'unknown dtype {self.dtype!r}; expected one of {", ".join(DTYPES)}')
    if self.image_size < 32:
      raise ValueError(f'image_size must be at least 32, got {self.image_size}')
    if self.repeats < 1 or self.warmup < 0:
      raise ValueError('repeats must be >= 1 and warmup >= 0')
    if not self.pause_s >= 0:
      raise ValueError(f'pause_s must be >= 0 seconds, got {self.pause_s}')
    if not self.min_time_s >= 0:
      raise ValueError(f'min_time_s must be >= 0 seconds, got {self.min_time_s}')
    if not self.infer_batches:
      raise ValueError('give at least one inference batch size (the logits are compared there)')
    if any(b < 1 for b in self.infer_batches) or self.train_batch < 0:
      raise ValueError('batch sizes must be positive (train_batch 0 skips the train step)')


def _median(fn: Callable[[], Any], *, warmup: int, repeats: int) -> float:
  return time_call(fn, warmup=warmup, repeats=repeats).median_s


def repeats_for(seconds_per_call: float, config: PeersConfig) -> int:
  """How many calls of each library to time: `config.repeats`, or as many as take
  `config.min_time_s` at `seconds_per_call` (the slower library's), at most MAX_REPEATS."""
  wanted = math.ceil(config.min_time_s / max(seconds_per_call, 1e-9))
  return max(config.repeats, min(MAX_REPEATS, wanted))


def workloads(config: PeersConfig) -> list[tuple[str, int]]:
  """(kind, batch) in measurement order: ('infer', b) ... then ('train', b)."""
  out = [('infer', b) for b in config.infer_batches]
  return out + ([('train', config.train_batch)] if config.train_batch else [])


def _data(config: PeersConfig, batch: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(config.seed + batch)
  images = rng.standard_normal((batch, config.image_size, config.image_size, 3), np.float32)
  return images, rng.integers(0, 1000, batch).astype(np.int32)


# ---------------------------------------------------------------------------- sepnets

def sepnets_model(name: str, torch_model: Any, config: PeersConfig) -> nnx.Module:
  """The zoo's `name` with `torch_model`'s weights (eval mode), computing in `config.dtype`
  with fp32 parameters."""
  from sepnets.convert import load_torch_weights
  model = create_model(name, rngs=nnx.Rngs(config.seed), strategy=config.strategy,
                       dtype=jnp.dtype(config.dtype))
  load_torch_weights(model, torch_model)
  return model


def sepnets_compiler_options() -> dict[str, Any]:
  """What sepnets' steps are compiled with here (`runtime.cpu_compiler_options` on CPU)."""
  return cpu_compiler_options() if jax.default_backend() == 'cpu' else {}


def _sepnets(model: nnx.Module, config: PeersConfig) -> dict[str, Any]:
  """Compiles sepnets' step for each workload: {'calls': {key: fn}, 'compile_s', 'logits'}."""
  options = sepnets_compiler_options()
  out: dict[str, Any] = {'calls': {}, 'compile_s': {}}
  for kind, batch in workloads(config):
    key = f'{kind}{batch}'
    images, labels = _data(config, batch)
    x = jnp.asarray(images)
    start = time.perf_counter()
    if kind == 'infer':
      predict = compile_predictor(model, x, compiler_options=options)
      out['compile_s'][key] = time.perf_counter() - start
      out['calls'][key] = lambda predict=predict, x=x: jax.block_until_ready(predict(x))
      if batch == config.infer_batches[0]:
        out['logits'] = np.asarray(predict(x), np.float32)
      continue
    model.train()
    train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    carry = [params, rest, optimizer.init(params)]
    y = jnp.asarray(labels)
    train = jax.jit(make_train_step(train_graphdef, optimizer), donate_argnums=(0, 1, 2),
                    compiler_options=options)
    train = train.lower(*carry, x, y).compile()
    out['compile_s'][key] = time.perf_counter() - start

    def call(train=train, carry=carry, x=x, y=y):
      params, rest, opt_state, loss = train(*carry, x, y)
      carry[:] = [params, rest, opt_state]
      jax.block_until_ready(loss)

    out['calls'][key] = call
  return out


# ---------------------------------------------------------------------------- PyTorch

def torch_device() -> str:
  """Where PyTorch runs: where JAX runs ('cpu', or 'cuda' when JAX's backend is the GPU)."""
  import torch
  backend = jax.default_backend()
  if backend == 'cpu':
    return 'cpu'
  if backend == 'gpu':
    if not torch.cuda.is_available():
      raise RuntimeError(f'JAX runs on the GPU but this PyTorch ({torch.__version__}) sees no '
                         'CUDA device: install a CUDA build of torch, or run with '
                         'JAX_PLATFORMS=cpu')
    return 'cuda'
  raise RuntimeError(f'the peers benchmark runs on the CPU or an NVIDIA GPU; JAX runs on '
                     f'{backend!r} here (set JAX_PLATFORMS=cpu or cuda)')


def torch_model(name: str, seed: int) -> Any:
  """torchvision's model with random weights (BatchNorm statistics and classifier drawn so the
  logits are O(1): a mismatch cannot hide), eval mode, channels_last."""
  import torch
  from sepnets.convert.torch_refs import build_reference, randomize
  torch.manual_seed(seed)
  return randomize(build_reference(name), seed).to(memory_format=torch.channels_last)


def _torch(model: Any, config: PeersConfig) -> dict[str, Any]:
  """PyTorch's call for each workload on `torch_device()`: {'calls': {key: fn}, 'modes': {key:
  fn setting the model's train/eval mode}, 'logits'}. Each call returns once the device is
  done (the train step's `loss.item()` waits for it; inference synchronizes on CUDA)."""
  import torch
  device = torch_device()
  if device == 'cuda':
    torch.backends.cudnn.benchmark = True
  model.to(device)
  done = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  bf16 = config.dtype == 'bfloat16'
  autocast = ((lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16  # noqa: E731
              else contextlib.nullcontext)
  out: dict[str, Any] = {'calls': {}, 'modes': {}, 'threads': torch.get_num_threads()}
  for kind, batch in workloads(config):
    key = f'{kind}{batch}'
    images, labels = _data(config, batch)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).to(device)
    if kind == 'infer':
      def call(x=x):
        with torch.inference_mode(), autocast():
          logits = model(x)
        done()
        return logits

      out['calls'][key], out['modes'][key] = call, model.eval
      if batch == config.infer_batches[0]:
        model.eval()
        out['logits'] = call().float().cpu().numpy()
      continue
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    y = torch.from_numpy(labels).long().to(device)

    def step(x=x, y=y, optimizer=optimizer):
      optimizer.zero_grad(set_to_none=True)
      with autocast():
        logits = model(x)
      loss = torch.nn.functional.cross_entropy(logits.float(), y)
      loss.backward()
      optimizer.step()
      return loss.item()

    out['calls'][key], out['modes'][key] = step, model.train
  return out


# ---------------------------------------------------------------------------- Keras

def _keras(name: str, config: PeersConfig) -> dict[str, Any]:
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  import keras
  if keras.backend.backend() != 'jax':
    raise RuntimeError(f'Keras runs on {keras.backend.backend()!r}; set KERAS_BACKEND=jax '
                       'before anything imports keras')
  keras.utils.set_random_seed(config.seed)
  size = config.image_size
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy('mixed_bfloat16' if config.dtype == 'bfloat16' else 'float32')
  try:
    model = getattr(keras.applications, KERAS_APPLICATIONS[name])(
        weights=None, input_shape=(size, size, 3), classes=1000)
  finally:
    keras.config.set_dtype_policy(policy)
  model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                loss='sparse_categorical_crossentropy', jit_compile=True)
  out: dict[str, Any] = {'times': {}, 'version': keras.__version__}
  for kind, batch in workloads(config):
    images, labels = _data(config, batch)
    if kind == 'infer':
      call = lambda: model.predict_on_batch(images)  # noqa: E731
    else:
      call = lambda: model.train_on_batch(images, labels)  # noqa: E731
    out['times'][f'{kind}{batch}'] = _median(call, warmup=config.warmup,
                                                    repeats=config.repeats)
  return out


# ---------------------------------------------------------------------------- the run

def run_peers(config: PeersConfig,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Times every model and workload on sepnets and each peer; returns a JSON-ready result."""
  import torch
  say = progress or (lambda _: None)
  rows = []
  for name in config.models:
    say(f'{name}: building both models')
    reference = torch_model(name, config.seed)
    model = sepnets_model(name, reference, config)  # before PyTorch's train step moves them
    say(f'{name}: sepnets ({config.strategy}), compiling')
    mine = _sepnets(model, config)
    theirs = _torch(reference, config)
    times: dict[str, dict[str, float]] = {'sepnets': {}, 'torch': {}}
    repeats: dict[str, int] = {}
    sizing: dict[str, float] = {}  # the slower library's one call that sized the repeats
    for kind, batch in workloads(config):
      key = f'{kind}{batch}'
      say(f'{name}: {kind} batch {batch}, sepnets and PyTorch interleaved')
      theirs['modes'][key]()
      pair = {'sepnets': mine['calls'][key], 'torch': theirs['calls'][key]}
      for fn in pair.values():  # warm-up, then one call each to size the repeats
        for _ in range(config.warmup):
          fn()
      sizing[key] = max(time_call(fn, warmup=0, repeats=1).median_s for fn in pair.values())
      repeats[key] = repeats_for(sizing[key], config)
      timed = side_by_side(pair, warmup=0, repeats=repeats[key], pause_s=config.pause_s)
      steady = side_by_side(pair, warmup=0, repeats=repeats[key], pause_s=0, lead_in=1)
      for lib in pair:
        times[lib][key] = timed[lib].median_s
        times[lib][key + '_steady'] = steady[lib].median_s
    reference.eval()
    keras_result = None
    if 'keras' in config.peers:
      say(f'{name}: Keras')
      keras_result = _keras(name, config)
    logits_diff = float(np.max(np.abs(mine['logits'] - theirs['logits'])))
    for kind, batch in workloads(config):
      key = f'{kind}{batch}'
      row = {'model': name, 'workload': kind, 'batch': batch,
             'sepnets_s': times['sepnets'][key], 'torch_s': times['torch'][key],
             'compile_s': mine['compile_s'][key], 'max_logit_diff': logits_diff,
             'repeats': repeats[key], 'sizing_call_s': sizing[key]}
      row['ratio_torch'] = row['sepnets_s'] / row['torch_s']
      row['sepnets_steady_s'] = times['sepnets'][key + '_steady']
      row['torch_steady_s'] = times['torch'][key + '_steady']
      row['ratio_torch_steady'] = row['sepnets_steady_s'] / row['torch_steady_s']
      if keras_result is not None:
        row['keras_s'] = keras_result['times'][key]
        row['ratio_keras'] = row['sepnets_s'] / row['keras_s']
        row['keras_over_torch'] = row['keras_s'] / row['torch_s']
      rows.append(row)
    del reference, model
  meta = run_metadata()
  meta['versions']['torch'] = torch.__version__
  meta['torch_threads'] = torch.get_num_threads()
  meta['torch_device'] = torch_device()
  if meta['torch_device'] == 'cuda':
    meta['torch_device_name'] = torch.cuda.get_device_name()
  meta['sepnets_compiler_options'] = sepnets_compiler_options()
  return {'config': dataclasses.asdict(config), 'dtype': config.dtype, 'metadata': meta,
          'rows': rows}


def _where(meta: dict[str, Any]) -> str:
  if meta.get('torch_device') == 'cuda':
    return (f"{meta.get('torch_device_name') or 'GPU'} (JAX backend {meta['backend']}, "
            f"PyTorch on CUDA, cuDNN autotuner on)")
  return (f"{meta['backend']} ({meta['cpu_count']} cores, torch threads "
          f"{meta.get('torch_threads')})")


def _precision(dtype: str, keras: bool) -> str:
  if dtype == 'bfloat16':
    return ('bf16 mixed precision (fp32 parameters, bf16 compute: sepnets `dtype=bfloat16`, '
            f"`torch.autocast`{', Keras `mixed_bfloat16`' if keras else ''})")
  return 'fp32'


def _repeats_text(cfg: dict[str, Any]) -> str:
  if cfg.get('min_time_s', 0) > 0:
    return (f"{cfg['repeats']} or more calls (as many as take {cfg['min_time_s']:g} s, at most "
            f"{MAX_REPEATS}: the last column)")
  return str(cfg['repeats'])


def _options_text(options: dict[str, Any] | None) -> str:
  return ', '.join(f'`{k}={v}`' for k, v in options.items()) if options else 'XLA defaults'


def format_markdown(result: dict[str, Any], command: str | None = None) -> str:
  """The result as a Markdown table (times in ms) with the ratios."""
  cfg, meta = result['config'], result['metadata']
  keras = any('keras_s' in r for r in result['rows'])
  dtype = result.get('dtype', 'float32')
  lines = [f"# sepnets vs PyTorch{' and Keras (JAX)' if keras else ''}: {cfg['image_size']}x"
           f"{cfg['image_size']}, {'bf16' if dtype == 'bfloat16' else 'fp32'}", '',
           f"{_where(meta)}; {_precision(dtype, keras)}; jax {meta['versions'].get('jax')}, torch "
           f"{meta['versions'].get('torch')}; malloc: {meta.get('malloc', 'default glibc')} "
           f"(`sepnets.runtime`, the same for all); sepnets depthwise strategy "
           f"`{cfg['strategy']}`, compiler options "
           f"{_options_text(meta.get('sepnets_compiler_options'))}; "
           f"medians of {_repeats_text(cfg)} after {cfg['warmup']} warm-up calls, sepnets' and "
           "PyTorch's calls interleaved (alternating which goes first), each timed twice: "
           f"*after a pause*, an untimed {cfg.get('pause_s', 0.02) * 1e3:g} ms before each "
           "call (it starts from idle cores, as a request that comes now and then), and "
           "*back to back*, an untimed call of the same function right before each (steady "
           "state, as a loop over batches)"
           f"{'; Keras after them, back to back' if keras else ''}. "
           'Ratio = sepnets / peer (below 1: sepnets faster).', '']
  if command:
    lines += [f'Command: `{command}`', '']
  steady = all('ratio_torch_steady' in r for r in result['rows'])
  timed_calls = cfg.get('min_time_s', 0) > 0
  header = ['model', 'workload', 'sepnets ms', 'PyTorch ms', 'sepnets / PyTorch']
  if steady:
    header = header[:2] + [f'{h}, after a pause' for h in header[2:]] + [
        'sepnets ms, back to back', 'PyTorch ms, back to back',
        'sepnets / PyTorch, back to back']
  if keras:
    header += ['Keras ms', 'sepnets / Keras', 'Keras / PyTorch']
  header += ['sepnets compile s'] + (['calls timed'] if timed_calls else [])
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in result['rows']:
    cells = [r['model'], f"{'inference' if r['workload'] == 'infer' else 'train step'}, "
             f"batch {r['batch']}", f"{r['sepnets_s'] * 1e3:.1f}", f"{r['torch_s'] * 1e3:.1f}",
             f"**{r['ratio_torch']:.2f}**"]
    if steady:
      cells += [f"{r['sepnets_steady_s'] * 1e3:.1f}", f"{r['torch_steady_s'] * 1e3:.1f}",
                f"**{r['ratio_torch_steady']:.2f}**"]
    if keras:
      cells += [f"{r['keras_s'] * 1e3:.1f}", f"{r['ratio_keras']:.2f}",
                f"{r['keras_over_torch']:.2f}"] if 'keras_s' in r else ['-'] * 3
    cells.append(f"{r['compile_s']:.1f}")
    if timed_calls:
      cells.append(str(r.get('repeats', cfg['repeats'])))
    lines.append('| ' + ' | '.join(cells) + ' |')
  def above(key: str) -> str:
    slower = [f"{r['model']} {r['workload']} b{r['batch']} ({r[key]:.2f})"
              for r in result['rows'] if r[key] > 1.0]
    return ', '.join(slower) if slower else 'none'

  lines += ['', f"Still slower than PyTorch{', after a pause' if steady else ''}: "
            f"{above('ratio_torch')}."
            + (f" Back to back: {above('ratio_torch_steady')}." if steady else ''),
            'Largest |logit| difference sepnets vs PyTorch (same weights, eval): '
            + ', '.join(f"{m} {d:.1e}" for m, d in
                        dict((r['model'], r['max_logit_diff']) for r in result['rows']).items())
            + '.']
  return '\n'.join(lines) + '\n'
