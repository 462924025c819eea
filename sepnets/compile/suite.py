"""`sepnets bench`: every (model, target, batch, dtype, mode) lowered, compiled and measured.

Per run: StableHLO and optimized HLO files, the compiler's cost and memory figures, an op
census, analytic params and MACs beside compiled flops, and on the local CPU the measured
latency (median after warm-up) with achieved FLOP/s. Results go to one folder: results.json,
results.csv and report.md, written atomically. Targets whose extra is missing are skipped
with a one-line reason; a workload too large for a target's memory is reported as such.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sepnets import costs
from sepnets.compile.lowering import MODES, compile_workload, model_workload
from sepnets.compile.metadata import run_metadata
from sepnets.compile.plots import plot_macs_vs_latency, plot_memory
from sepnets.compile.targets import TargetUnavailable, check_available, parse_target
from sepnets.compile.timing import time_compiled
from sepnets.files import atomic_write_text
from sepnets.registry import list_models
from sepnets.summary import model_layer_costs

DTYPES = {'fp32': 'float32', 'float32': 'float32', 'bf16': 'bfloat16', 'bfloat16': 'bfloat16'}
_TOO_LARGE = ('RESOURCE_EXHAUSTED', 'out of memory', 'Ran out of memory', 'exceeds the memory')


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  models: tuple[str, ...]
  targets: tuple[str, ...] = ('cpu',)
  batches: tuple[int, ...] = (1,)
  dtypes: tuple[str, ...] = ('float32',)
  modes: tuple[str, ...] = ('infer',)
  image_size: int | None = None
  repeats: int = 5
  strategy: str = 'auto'
  write_hlo: bool = True
  plots: bool = True

  def __post_init__(self):
    if not self.models:
      raise ValueError('no models to benchmark')
    for target in self.targets:
      try:
        parse_target(target)
      except TargetUnavailable:
        pass  # valid name, reported per run
    for mode in self.modes:
      if mode not in MODES:
        raise ValueError(f'unknown mode {mode!r}; expected one of {MODES}')
    for dtype in self.dtypes:
      if dtype not in DTYPES.values():
        raise ValueError(f'unknown dtype {dtype!r}; expected one of {sorted(set(DTYPES))}')
    for batch in self.batches:
      if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f'batch must be a positive integer, got {batch!r}')


def resolve_models(patterns: str) -> tuple[str, ...]:
  """Comma-separated names or shell patterns -> registered names (each must match)."""
  names: list[str] = []
  for pattern in (p.strip() for p in patterns.split(',') if p.strip()):
    matched = list_models(pattern)
    if not matched:
      raise ValueError(f'no model matches {pattern!r} (see sepnets models)')
    names += [n for n in matched if n not in names]
  return tuple(names)


def resolve_dtypes(text: str) -> tuple[str, ...]:
  out = []
  for name in (d.strip() for d in text.split(',') if d.strip()):
    if name not in DTYPES:
      raise ValueError(f'unknown dtype {name!r}; expected one of {sorted(DTYPES)}')
    out.append(DTYPES[name])
  return tuple(out)


def run_id(model: str, target: str, batch: int, dtype: str, mode: str) -> str:
  return f"{model}__{target.replace(':', '-')}__b{batch}__{dtype}__{mode}"


def _optimal(seconds: float | None) -> float | None:
  """XLA's estimate; a negative value (seen for big TPU train steps) means none."""
  return seconds if seconds is not None and seconds >= 0 else None


def _one_run(config: BenchConfig, out: Path, model: str, target_name: str, batch: int,
             dtype: str, mode: str) -> dict[str, Any]:
  row: dict[str, Any] = dict(id=run_id(model, target_name, batch, dtype, mode), model=model,
                             target=target_name, batch=batch, dtype=dtype, mode=mode)
  try:
    target = parse_target(target_name)
    check_available(target)
  except TargetUnavailable as err:
    return {**row, 'status': 'skipped', 'reason': str(err)}
  options = {'strategy': config.strategy}
  workload = model_workload(model, mode=mode, batch=batch, image_size=config.image_size,
                            dtype=dtype, **options)
  try:
    result = compile_workload(workload, target)
  except Exception as err:  # XLA reports a program too large for the device while compiling
    message = str(err)
    if any(marker in message for marker in _TOO_LARGE):
      return {**row, 'status': 'does not fit', 'reason': message.strip().splitlines()[0][:300]}
    raise
  layer_rows, size = model_layer_costs(model, image_size=config.image_size, batch=batch,
                                       **options)
  analytic = costs.totals(layer_rows)
  folder = out / row['id']
  files = []
  if config.write_hlo:
    files = [atomic_write_text(folder / 'stablehlo.mlir', result.stablehlo),
             atomic_write_text(folder / 'optimized_hlo.txt', result.hlo)]
  s, census = result.stats, result.census
  row.update(status='ok', device_kind=result.device_kind, image_size=size,
             params=analytic.params, macs=analytic.macs, macs_valid=analytic.macs_valid,
             flops=s.flops, bytes_accessed=s.bytes_accessed, transcendentals=s.transcendentals,
             optimal_seconds=_optimal(s.optimal_seconds), intensity=s.intensity,
             flops_over_2macs=(s.flops / (2 * analytic.macs) if s.flops else None),
             argument_bytes=s.argument_bytes, output_bytes=s.output_bytes,
             temp_bytes=s.temp_bytes, generated_code_bytes=s.generated_code_bytes,
             compile_seconds=s.compile_seconds, lowering_seconds=result.lowering_seconds,
             convolutions=census.convolutions, custom_calls=census.custom_calls,
             fusions=sum(census.fusions.values()), copies=census.copies,
             transposes=census.transposes, files=[str(f) for f in files])
  if not target.aot:
    args = model_workload(model, mode=mode, batch=batch, image_size=config.image_size,
                          dtype=dtype, concrete=True, **options).args
    timing = time_compiled(result.compiled, *args, repeats=config.repeats)
    row.update(latency_ms=timing.median_s * 1e3,
               achieved_gflops=(s.flops / timing.median_s / 1e9 if s.flops else None),
               achieved_gbps=(s.bytes_accessed / timing.median_s / 1e9 if s.bytes_accessed else None))
  return row


def bench_runs(config: BenchConfig) -> list[tuple[str, str, int, str, str]]:
  return list(itertools.product(config.models, config.targets, config.batches, config.dtypes,
                                config.modes))


def run_bench(config: BenchConfig, out: str | Path,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs every combination and writes results.json, results.csv and report.md to `out`."""
  out = Path(out)
  rows = []
  for model, target, batch, dtype, mode in bench_runs(config):
    if progress:
      progress(run_id(model, target, batch, dtype, mode))
    rows.append(_one_run(config, out, model, target, batch, dtype, mode))
  result = {'config': dataclasses.asdict(config), 'metadata': run_metadata(), 'runs': rows}
  if config.plots:
    drawn = (plot_macs_vs_latency(rows, out / 'macs_vs_latency.png'),
             plot_memory(rows, out / 'memory.png'))
    result['plots'] = [p.name for p in drawn if p]
  atomic_write_text(out / 'results.json', json.dumps(result, indent=2) + '\n')
  atomic_write_text(out / 'results.csv', to_csv(rows))
  atomic_write_text(out / 'report.md', to_markdown(result))
  return result


CSV_FIELDS = ('id', 'status', 'model', 'target', 'device_kind', 'mode', 'batch', 'dtype',
              'image_size', 'params', 'macs', 'macs_valid', 'flops', 'bytes_accessed',
              'transcendentals', 'optimal_seconds', 'intensity', 'argument_bytes',
              'output_bytes', 'temp_bytes', 'compile_seconds', 'latency_ms', 'achieved_gflops',
              'achieved_gbps', 'reason')


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def _num(value: Any, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def to_markdown(result: dict[str, Any]) -> str:
  meta = result['metadata']
  lines = ['# sepnets bench', '',
           f"jax {meta['versions']['jax']}, flax {meta['versions']['flax']}, backend "
           f"{meta['backend']} ({meta['cpu_count']} cores), git {meta['git_sha'] or '-'}", '',
           '| model | target | mode | batch | dtype | params | MACs | XLA flops | flops / 2MACs '
           '| bytes accessed | flops/byte | temp MB | latency ms | GFLOP/s | status |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in result['runs']:
    if r['status'] != 'ok':
      lines.append(f"| {r['model']} | {r['target']} | {r['mode']} | {r['batch']} | {r['dtype']} "
                   f"| | | | | | | | | | {r['status']}: {r['reason']} |")
      continue
    temp = None if r['temp_bytes'] is None else r['temp_bytes'] / 2**20
    lines.append(
        f"| {r['model']} | {r['target']} | {r['mode']} | {r['batch']} | {r['dtype']} "
        f"| {r['params']:,} | {r['macs']:,} | {_num(r['flops'], ',.0f')} "
        f"| {_num(r['flops_over_2macs'], '.3f')} | {_num(r['bytes_accessed'], ',.0f')} "
        f"| {_num(r['intensity'], '.1f')} | {_num(temp, '.1f')} "
        f"| {_num(r.get('latency_ms'), '.2f')} | {_num(r.get('achieved_gflops'), '.1f')} | ok |")
  lines += [''] + [f'![{name}]({name})' for name in result.get('plots', [])]
  lines += ['', 'MACs: analytic, conv + linear over every tap, for the whole batch. flops / 2MACs '
            'above 1 is compiled work beyond the convolutions (elementwise ops, BatchNorm in '
            'train mode, the backward pass and the update in train mode).']
  return '\n'.join(lines) + '\n'
