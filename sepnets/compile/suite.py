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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sepnets import costs
from sepnets.compile.hlo_cost import hlo_cost
from sepnets.compile.layer_workloads import DEPTHWISE_LAYERS, layer_workload, resolve_layer_sets
from sepnets.compile.lowering import MODES, compile_workload, model_workload
from sepnets.compile.metadata import run_metadata
from sepnets.compile.peaks import Peaks, measure_peaks
from sepnets.compile.plots import plot_macs_vs_latency, plot_memory, plot_roofline
from sepnets.compile.reconcile import format_reconciliation, reconcile
from sepnets.compile.targets import TargetUnavailable, check_available, parse_target
from sepnets.compile.timing import time_compiled
from sepnets.files import atomic_write_text
from sepnets.progress import ProgressBar
from sepnets.layers.depthwise import get_strategy
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
  layers: tuple[str, ...] = ()  # 'worked' and/or model names whose layer shapes to bench
  layer_strategies: tuple[str, ...] = ('grouped', 'shift')
  write_hlo: bool = True
  plots: bool = True
  peaks: bool = True  # measure peak FLOP/s and copy bandwidth on timed targets

  def __post_init__(self):
    if not self.models and not self.layers:
      raise ValueError('nothing to benchmark: no models and no layers')
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
    for name in (self.strategy, *self.layer_strategies):
      get_strategy(name)
    resolve_layer_sets(self.layers)  # unknown names raise here, before anything runs


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


@dataclasses.dataclass(frozen=True)
class Run:
  kind: str  # 'model' | 'layer'
  name: str  # model name, or the layer spec's name
  target: str
  batch: int
  dtype: str
  mode: str
  strategy: str

  @property
  def id(self) -> str:
    name = self.name.replace('/', '__')
    return (f"{name}__{self.target.replace(':', '-')}__b{self.batch}__{self.dtype}__{self.mode}"
            + (f'__{self.strategy}' if self.kind == 'layer' and self.strategy else ''))


def run_id(model: str, target: str, batch: int, dtype: str, mode: str) -> str:
  return Run('model', model, target, batch, dtype, mode, '').id


def _optimal(seconds: float | None) -> float | None:
  """XLA's estimate; a negative value (seen for big TPU train steps) means none."""
  return seconds if seconds is not None and seconds >= 0 else None


def bench_runs(config: BenchConfig) -> list[Run]:
  runs = [Run('model', m, t, b, d, mode, config.strategy) for m, t, b, d, mode in
          itertools.product(config.models, config.targets, config.batches, config.dtypes,
                            config.modes)]
  for spec in resolve_layer_sets(config.layers):
    strategies = config.layer_strategies if spec.layer in DEPTHWISE_LAYERS else ('',)
    runs += [Run('layer', spec.name, t, b, d, 'infer', st) for t, b, d, st in
             itertools.product(config.targets, config.batches, config.dtypes, strategies)]
  return runs


def _workload(config: BenchConfig, run: Run, concrete: bool = False):
  """(workload, analytic per-layer rows) of a run."""
  if run.kind == 'model':
    workload = model_workload(run.name, mode=run.mode, batch=run.batch,
                              image_size=config.image_size, dtype=run.dtype, concrete=concrete,
                              strategy=config.strategy)
    rows, _ = model_layer_costs(run.name, image_size=config.image_size, batch=run.batch,
                                strategy=config.strategy)
    return workload, rows
  spec = next(s for s in resolve_layer_sets(config.layers) if s.name == run.name)
  return layer_workload(spec, batch=run.batch, dtype=run.dtype,
                        strategy=run.strategy or 'grouped', concrete=concrete)


def _too_large(message: str) -> bool:
  return any(marker in message for marker in _TOO_LARGE)


def _one_run(config: BenchConfig, out: Path, run: Run, peaks: dict[str, Peaks]) -> dict[str, Any]:
  row: dict[str, Any] = dict(id=run.id, kind=run.kind, model=run.name, target=run.target,
                             batch=run.batch, dtype=run.dtype, mode=run.mode,
                             strategy=run.strategy or None)
  try:
    target = parse_target(run.target)
    check_available(target)
  except TargetUnavailable as err:
    return {**row, 'status': 'skipped', 'reason': str(err)}
  workload, layer_rows = _workload(config, run)
  try:
    result = compile_workload(workload, target)
  except Exception as err:  # XLA reports a program too large for the device while compiling
    if _too_large(str(err)):
      return {**row, 'status': 'does not fit', 'reason': str(err).strip().splitlines()[0][:300]}
    raise
  s, census = result.stats, result.census
  cost = hlo_cost(result.hlo)
  analytic = costs.totals(layer_rows)
  rec = reconcile(cost, layer_rows, s.flops)
  folder = out / run.id
  files = []
  if config.write_hlo:
    files = [atomic_write_text(folder / 'stablehlo.mlir', result.stablehlo),
             atomic_write_text(folder / 'optimized_hlo.txt', result.hlo)]
  files.append(atomic_write_text(folder / 'reconciliation.md',
                                 f'# {run.name} on {run.target}, {run.mode}, batch {run.batch}, '
                                 f'{run.dtype}\n\n' + format_reconciliation(rec)))
  flops = s.flops if s.flops is not None else float(cost.flops)
  nbytes = s.bytes_accessed if s.bytes_accessed is not None else float(cost.bytes_accessed)
  memory = sum(v or 0 for v in (s.argument_bytes, s.output_bytes, s.temp_bytes))
  limit = target.memory_bytes
  row.update(status='ok', device_kind=result.device_kind,
             image_size=workload.meta['image_size'], params=analytic.params, macs=analytic.macs,
             macs_valid=analytic.macs_valid, flops=flops,
             flops_source='xla' if s.flops is not None else 'hlo', xla_flops=s.flops,
             hlo_flops=cost.flops, bytes_accessed=nbytes,
             bytes_source='xla' if s.bytes_accessed is not None else 'hlo',
             xla_bytes=s.bytes_accessed, hlo_bytes=cost.bytes_accessed,
             transcendentals=(s.transcendentals if s.transcendentals is not None
                              else cost.transcendentals),
             optimal_seconds=_optimal(s.optimal_seconds),
             intensity=flops / nbytes if nbytes else None,
             flops_over_2macs=flops / (2 * analytic.macs) if analytic.macs else None,
             argument_bytes=s.argument_bytes, output_bytes=s.output_bytes,
             temp_bytes=s.temp_bytes, generated_code_bytes=s.generated_code_bytes,
             memory_bytes=memory, memory_limit_bytes=limit,
             compile_seconds=s.compile_seconds, lowering_seconds=result.lowering_seconds,
             convolutions=census.convolutions, custom_calls=census.custom_calls,
             fusions=sum(census.fusions.values()), copies=census.copies,
             transposes=census.transposes, flops_by_category=cost.flops_by_category,
             reconciliation=rec.summary(), files=[str(f) for f in files])
  if limit is not None and memory > limit:
    row.update(status='does not fit',
               reason=f'needs {memory / 2**30:.2f} GiB (arguments + outputs + temporaries), '
                      f'{result.device_kind} has {limit / 2**30:.2f} GiB')
    return row
  if not target.aot:
    args = _workload(config, run, concrete=True)[0].args
    timing = time_compiled(result.compiled, *args, repeats=config.repeats)
    seconds = timing.median_s
    row.update(latency_ms=seconds * 1e3, achieved_gflops=flops / seconds / 1e9,
               achieved_gbps=nbytes / seconds / 1e9)
    if run.target in peaks:
      # The roofline's traffic is the compulsory one (arguments in, outputs out): XLA's bytes
      # accessed sums every op's operands and outputs, cache hits included, so it can exceed
      # what really crosses the memory bus.
      p = peaks[run.target]
      compulsory = (s.argument_bytes or 0) + (s.output_bytes or 0)
      bound_s = p.roofline_seconds(flops, compulsory, memory, run.dtype)
      compute_s = flops / max(p.flops_per_s.values())
      row.update(compulsory_bytes=compulsory,
                 roofline_intensity=flops / compulsory if compulsory else None,
                 roofline_fraction=bound_s / seconds,
                 roofline_bound='compute' if compute_s >= bound_s else 'memory')
  return row


def run_bench(config: BenchConfig, out: str | Path,
              progress: ProgressBar | None = None) -> dict[str, Any]:
  """Runs every combination and writes results.json, results.csv and report.md to `out`."""
  out = Path(out)
  runs = bench_runs(config)
  peaks: dict[str, Peaks] = {}
  if config.peaks:
    for name in dict.fromkeys(r.target for r in runs):
      try:
        target = parse_target(name)
        check_available(target)
      except TargetUnavailable:
        continue
      if not target.aot:
        if progress:
          progress.note(f'{name}: measuring peak FLOP/s and copy bandwidth')
        peaks[name] = measure_peaks(target.devices()[0])
  rows = []
  for run in runs:
    if progress:
      progress.step(run.id)
    rows.append(_one_run(config, out, run, peaks))
  if progress:
    progress.close()
  result = {'config': dataclasses.asdict(config), 'metadata': run_metadata(),
            'peaks': {name: p.to_json() for name, p in peaks.items()}, 'runs': rows}
  if config.plots:
    drawn = (plot_roofline(rows, result['peaks'], out / 'roofline.png'),
             plot_macs_vs_latency(rows, out / 'macs_vs_latency.png'),
             plot_memory(rows, out / 'memory.png'))
    result['plots'] = [p.name for p in drawn if p]
  atomic_write_text(out / 'results.json', json.dumps(result, indent=2) + '\n')
  atomic_write_text(out / 'results.csv', to_csv(rows))
  atomic_write_text(out / 'report.md', to_markdown(result))
  return result


CSV_FIELDS = ('id', 'status', 'kind', 'model', 'strategy', 'target', 'device_kind', 'mode',
              'batch', 'dtype', 'image_size', 'params', 'macs', 'macs_valid', 'flops',
              'flops_source', 'xla_flops', 'hlo_flops', 'bytes_accessed', 'bytes_source',
              'xla_bytes', 'hlo_bytes', 'transcendentals', 'optimal_seconds', 'intensity',
              'argument_bytes', 'output_bytes', 'temp_bytes', 'memory_bytes',
              'memory_limit_bytes', 'compile_seconds', 'latency_ms', 'achieved_gflops',
              'achieved_gbps', 'compulsory_bytes', 'roofline_intensity', 'roofline_fraction',
              'roofline_bound', 'reason')


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def _num(value: Any, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def _times(ratio: float | None) -> str:
  return '-' if ratio is None else f'{ratio:.2f}x'


def _flops_cell(r: dict[str, Any]) -> str:
  return _num(r['flops'], ',.0f') + (' (HLO)' if r.get('flops_source') == 'hlo' else '')


def _model_table(runs: Sequence[dict[str, Any]]) -> list[str]:
  lines = ['| model | target | mode | batch | dtype | params | MACs | compiled flops '
           '| flops / 2MACs | bytes accessed | flops/byte | temp MiB | compile s | latency ms '
           '| GFLOP/s | roofline | status |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in runs:
    if r['status'] == 'skipped':
      lines.append(f"| {r['model']} | {r['target']} | {r['mode']} | {r['batch']} | {r['dtype']} "
                   f"| | | | | | | | | | | | skipped: {r['reason']} |")
      continue
    temp = None if r.get('temp_bytes') is None else r['temp_bytes'] / 2**20
    status = 'ok' if r['status'] == 'ok' else f"{r['status']}: {r.get('reason', '')}"
    if 'params' not in r:
      lines.append(f"| {r['model']} | {r['target']} | {r['mode']} | {r['batch']} | {r['dtype']} "
                   f"| | | | | | | | | | | | {status} |")
      continue
    lines.append(
        f"| {r['model']} | {r['target']} | {r['mode']} | {r['batch']} | {r['dtype']} "
        f"| {r['params']:,} | {r['macs']:,} | {_flops_cell(r)} "
        f"| {_num(r['flops_over_2macs'], '.3f')} | {_num(r['bytes_accessed'], ',.0f')} "
        f"| {_num(r['intensity'], '.1f')} | {_num(temp, '.1f')} "
        f"| {_num(r.get('compile_seconds'), '.1f')} | {_num(r.get('latency_ms'), '.2f')} "
        f"| {_num(r.get('achieved_gflops'), '.1f')} | {_num(r.get('roofline_fraction'), '.1%')} "
        f"| {status} |")
  return lines


def _layer_table(runs: Sequence[dict[str, Any]]) -> list[str]:
  lines = ['| layer | strategy | target | batch | params | MACs | compiled flops | bytes accessed '
           '| flops/byte | latency ms | GB/s | roofline | bound | status |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in runs:
    if r['status'] != 'ok':
      lines.append(f"| {r['model']} | {r.get('strategy') or ''} | {r['target']} | {r['batch']} "
                   f"| | | | | | | | | | {r['status']}: {r.get('reason', '')} |")
      continue
    lines.append(
        f"| {r['model']} | {r.get('strategy') or ''} | {r['target']} | {r['batch']} "
        f"| {r['params']:,} | {r['macs']:,} | {_flops_cell(r)} "
        f"| {_num(r['bytes_accessed'], ',.0f')} | {_num(r['intensity'], '.1f')} "
        f"| {_num(r.get('latency_ms'), '.3f')} | {_num(r.get('achieved_gbps'), '.1f')} "
        f"| {_num(r.get('roofline_fraction'), '.1%')} | {r.get('roofline_bound') or '-'} | ok |")
  return lines


def worked_example_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Standard / separable ratios per (target, batch, dtype, strategy) from the worked runs."""
  ok = [r for r in rows if r['status'] == 'ok' and r['model'].startswith('worked/')]
  out = []
  for std in (r for r in ok if r['model'].startswith('worked/standard')):
    for sep in (r for r in ok if r['model'].startswith('worked/separable')):
      if (sep['target'], sep['batch'], sep['dtype']) != (std['target'], std['batch'],
                                                         std['dtype']):
        continue

      def ratio(key):
        a, b = std.get(key), sep.get(key)
        return a / b if a is not None and b else None

      out.append(dict(target=std['target'], batch=std['batch'], dtype=std['dtype'],
                      strategy=sep['strategy'], params=ratio('params'), macs=ratio('macs'),
                      flops=ratio('flops'), flops_source=sep['flops_source'],
                      bytes=ratio('bytes_accessed'), latency=ratio('latency_ms'),
                      standard_flops=std['flops'], separable_flops=sep['flops'],
                      standard_bytes=std['bytes_accessed'],
                      separable_bytes=sep['bytes_accessed']))
  return out


def to_markdown(result: dict[str, Any]) -> str:
  meta = result['metadata']
  runs = result['runs']
  lines = ['# sepnets bench', '',
           f"jax {meta['versions']['jax']}, flax {meta['versions']['flax']}, backend "
           f"{meta['backend']} ({meta['cpu_count']} cores), git {meta['git_sha'] or '-'}", '']
  for name, p in result.get('peaks', {}).items():
    copies = ', '.join(f'{int(k) / 2**20:.0f} MiB {v:.1f}' for k, v in p['copy_gb_per_s'].items())
    peak = ', '.join(f'{k} {v:.1f}' for k, v in p['gflops_per_s'].items())
    lines.append(f"Measured on `{name}` ({p['device_kind']}): matmul peak GFLOP/s {peak}; "
                 f"copy GB/s by working set: {copies}.")
  lines.append('')
  models = [r for r in runs if r.get('kind', 'model') == 'model']
  layers = [r for r in runs if r.get('kind') == 'layer']
  if models:
    lines += ['## Models', ''] + _model_table(models) + ['']
    lines += ['MACs: analytic, conv + linear over every tap, for the whole batch. Compiled flops '
              "are XLA's cost analysis, or counted from the optimized HLO (marked HLO) where XLA "
              'gives none (deviceless GPU). flops / 2MACs above 1 is compiled work beyond the '
              'convolutions; the reconciliation below accounts for every flop.', '']
    lines += ['## Reconciliation: analytic MACs to compiled flops', '']
    for r in models:
      if r['status'] == 'ok' and r.get('reconciliation'):
        rec = r['reconciliation']
        lines += [f"### {r['model']} on {r['target']}, {r['mode']}, batch {r['batch']}, "
                  f"{r['dtype']} ([per layer]({r['id']}/reconciliation.md))", '',
                  _bridge(rec), '']
  if layers:
    lines += ['## Layers', ''] + _layer_table(layers) + ['']
    worked = worked_example_rows(runs)
    if worked:
      lines += ['## Worked example: standard vs separable, K=3, C=256, 56x56', '',
                'Standard / separable (above 1: the separable layer is cheaper).', '',
                '| target | batch | dtype | strategy | params | MACs | compiled flops | standard '
                'flops | separable flops | bytes accessed | latency |',
                '|---|---|---|---|---|---|---|---|---|---|---|']
      for w in worked:
        lines.append(
            f"| {w['target']} | {w['batch']} | {w['dtype']} | {w['strategy']} "
            f"| {_times(w['params'])} | {_times(w['macs'])} "
            f"| {_times(w['flops'])}{' (HLO)' if w['flops_source'] == 'hlo' else ''} "
            f"| {_num(w['standard_flops'], ',.0f')} | {_num(w['separable_flops'], ',.0f')} "
            f"| {_times(w['bytes'])} | {_times(w['latency'])} |")
      lines.append('')
  lines += [f'![{name}]({name})' for name in result.get('plots', [])]
  return '\n'.join(lines) + '\n'


def _bridge(rec: dict[str, Any]) -> str:
  def n(v):
    return '-' if v is None else f'{v:,.0f}'
  outside = ', '.join(f'{k} {v:,}' for k, v in list(rec['outside_by_opcode'].items())[:4])
  parts = [
      f"MACs {n(rec['macs'])} - padding taps {n(rec['padding_macs'])} = valid "
      f"{n(rec['macs_valid'])}; x2 = {n(rec['expected_matmul_flops'])}.",
      f"Compiled: forward conv/dot {n(rec['forward_matmul'])} ({rec['layers_exact']} of "
      f"{rec['layers']} layers exactly 2 x valid MACs) + backward conv/dot "
      f"{n(rec['backward_matmul'])} + in-layer elementwise {n(rec['forward_other'])} fwd / "
      f"{n(rec['backward_other'])} bwd + outside layers {n(rec['outside_layers'])} "
      f"({outside}) = {n(rec['hlo_flops'])} counted from the HLO; XLA reports "
      f"{n(rec['xla_flops'])}."]
  return ' '.join(parts)
