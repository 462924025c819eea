"""The layer suite: standard vs depthwise vs pointwise vs separable at one shape.

For each layer (and each depthwise strategy where one applies): analytic params and MACs,
XLA's compiled flops and bytes accessed on the local backend, arithmetic intensity, and the
measured time of the forward pass and of forward+backward (gradients for input and kernel).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepnets import costs
from sepnets.compile.analysis import lower_and_compile, stats_of
from sepnets.compile.metadata import run_metadata
from sepnets.compile.timing import time_compiled
from sepnets.layers import DepthwiseConv, PointwiseConv, SeparableConv, StandardConv
from sepnets.layers.depthwise import AUTO_CHOICE, auto_choice, get_strategy
from sepnets.layers.helpers import positive_int
from sepnets.tables import aligned

LAYERS = ('standard', 'depthwise', 'pointwise', 'separable')
DEPTHWISE_LAYERS = ('depthwise', 'separable')


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  kernel: int = 3
  in_chs: int = 256
  out_chs: int = 256
  height: int = 56
  width: int = 56
  batch: int = 8
  strategies: tuple[str, ...] = ('grouped', 'shift', 'native')
  repeats: int = 5
  backward: bool = True
  padding: str = 'same'

  def __post_init__(self):
    for name in ('kernel', 'in_chs', 'out_chs', 'height', 'width', 'batch', 'repeats'):
      positive_int(name, getattr(self, name))
    if not self.strategies:
      raise ValueError('at least one depthwise strategy is needed')
    for name in self.strategies:
      get_strategy(name)


@dataclasses.dataclass(frozen=True)
class LayerRow:
  layer: str
  strategy: str | None
  params: int
  macs: int
  macs_valid: int
  flops: float | None
  bytes_accessed: float | None
  intensity: float | None
  compile_s: float
  forward_ms: float
  forward_backward_ms: float | None


def build_layer(layer: str, config: SuiteConfig, strategy: str, rngs: nnx.Rngs) -> nnx.Module:
  c, o, k, p = config.in_chs, config.out_chs, config.kernel, config.padding
  if layer == 'standard':
    return StandardConv(c, o, k, padding=p, rngs=rngs)
  if layer == 'depthwise':
    return DepthwiseConv(c, k, padding=p, strategy=strategy, rngs=rngs)
  if layer == 'pointwise':
    return PointwiseConv(c, o, rngs=rngs)
  return SeparableConv(c, o, k, padding=p, strategy=strategy, rngs=rngs)


def _measure(layer: str, strategy: str | None, config: SuiteConfig, x: jax.Array) -> LayerRow:
  module = build_layer(layer, config, strategy or 'grouped', nnx.Rngs(0))
  graphdef, state = nnx.split(module)
  total = costs.totals(costs.layer_costs(module, x.shape, x.dtype))

  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  def forward_backward(state, x, cotangent):
    _, pullback = jax.vjp(forward, state, x)
    return pullback(cotangent)

  compiled, compile_s = lower_and_compile(forward, state, x)
  stats = stats_of(compiled, compile_s)
  forward_ms = time_compiled(compiled, state, x, repeats=config.repeats).median_s * 1e3
  backward_ms = None
  if config.backward:
    cotangent = jnp.ones(compiled.out_info.shape, x.dtype)
    grad_fn, _ = lower_and_compile(forward_backward, state, x, cotangent)
    backward_ms = time_compiled(grad_fn, state, x, cotangent,
                                repeats=config.repeats).median_s * 1e3
  return LayerRow(layer=layer, strategy=strategy, params=total.params, macs=total.macs,
                  macs_valid=total.macs_valid, flops=stats.flops,
                  bytes_accessed=stats.bytes_accessed, intensity=stats.intensity,
                  compile_s=compile_s, forward_ms=forward_ms, forward_backward_ms=backward_ms)


def suite_runs(config: SuiteConfig) -> list[tuple[str, str | None]]:
  """(layer, strategy) pairs in the order they are measured."""
  return [(layer, strategy) for layer in LAYERS
          for strategy in (config.strategies if layer in DEPTHWISE_LAYERS else (None,))]


def savings(rows: Sequence[LayerRow]) -> dict[str, dict[str, float | None]]:
  """standard / separable for every separable row (one per strategy): >1 means separable saves."""
  standard = next(r for r in rows if r.layer == 'standard')

  def ratio(a, b):
    return None if a is None or not b else a / b

  out = {}
  for row in rows:
    if row.layer == 'separable':
      out[row.strategy] = {
          field: ratio(getattr(standard, field), getattr(row, field))
          for field in ('params', 'macs', 'flops', 'bytes_accessed', 'forward_ms',
                        'forward_backward_ms')}
  return out


def run_layer_suite(config: SuiteConfig,
                    progress: Callable[[str], None] | None = None) -> dict[str, object]:
  """Measures every (layer, strategy) of the suite; returns a JSON-ready result."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal(
      (config.batch, config.height, config.width, config.in_chs)), jnp.float32)
  rows = []
  for layer, strategy in suite_runs(config):
    if progress:
      progress(f'{layer}' + (f' [{strategy}]' if strategy else ''))
    rows.append(_measure(layer, strategy, config, x))
  return {
      'config': dataclasses.asdict(config),
      'dtype': 'float32',
      'mode': 'forward (eval); forward_backward = vjp for input and kernel',
      'auto_choice': {**{p: auto_choice(p) for p in AUTO_CHOICE}, 'default': 'grouped'},
      'metadata': run_metadata(),
      'rows': [dataclasses.asdict(r) for r in rows],
      'savings_standard_over_separable': savings(rows),
  }


def _fmt(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def format_suite(result: dict[str, object]) -> str:
  """The suite's result as a plain-text table with the savings ratios."""
  cfg = result['config']
  meta = result['metadata']
  lines = [
      f"K={cfg['kernel']}  C_in={cfg['in_chs']}  C_out={cfg['out_chs']}  "
      f"input {cfg['batch']}x{cfg['height']}x{cfg['width']}x{cfg['in_chs']} fp32  "
      f"padding={cfg['padding']}  backend={meta['backend']} ({meta['cpu_count']} cores), "
      f"jax {meta['versions']['jax']}; times are medians of {cfg['repeats']}",
      f"auto strategy on this backend: "
      f"{result['auto_choice'].get(meta['backend'], result['auto_choice']['default'])}",
      '',
  ]
  header = ('layer', 'strategy', 'params', 'MACs', 'valid MACs', 'XLA flops', 'bytes accessed',
            'flops/byte', 'fwd ms', 'fwd+bwd ms')
  body = [(r['layer'], r['strategy'] or '', f"{r['params']:,}", f"{r['macs']:,}",
           f"{r['macs_valid']:,}", _fmt(r['flops'], ',.0f'), _fmt(r['bytes_accessed'], ',.0f'),
           _fmt(r['intensity'], '.2f'), f"{r['forward_ms']:.2f}",
           _fmt(r['forward_backward_ms'], '.2f')) for r in result['rows']]
  table = aligned([header, *body], left={0, 1})
  lines += [table[0], '-' * len(table[0]), *table[1:], '']
  lines.append('savings, standard / separable (x):')
  for strategy, ratios in result['savings_standard_over_separable'].items():
    parts = [f'{name} {_fmt(value, ".2f")}' for name, value in ratios.items()]
    lines.append(f'  separable [{strategy}]: ' + ', '.join(parts))
  return '\n'.join(lines)
