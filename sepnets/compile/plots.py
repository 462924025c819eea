"""Plots of a bench run (matplotlib, written as PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sepnets.files import pyplot, save_figure


def _figure():
  return pyplot()


def _save(fig, path: Path) -> Path:
  return save_figure(fig, path)


def _label(r: dict[str, Any]) -> str:
  dtype = r['dtype'].replace('bfloat16', 'bf16').replace('float', 'f')
  strategy = f" [{r['strategy']}]" if r.get('kind') == 'layer' and r.get('strategy') else ''
  return f"{r['model']}{strategy} {r['mode']} b{r['batch']} {dtype}"


def plot_macs_vs_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
  """Analytic MACs against measured CPU latency, log-log: the depthwise 'FLOPs trap' shows as
  points far above the line through the dense convolutions."""
  timed = [r for r in rows if r.get('latency_ms')]
  if not timed:
    return None
  plt = _figure()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in timed:
    ax.scatter(r['macs'] / 1e9, r['latency_ms'], s=30)
    ax.annotate(_label(r), (r['macs'] / 1e9, r['latency_ms']), fontsize=7, xytext=(4, 2),
                textcoords='offset points')
  ax.set(xlabel='analytic GMACs (every tap)', ylabel='CPU latency, ms (median)',
         title='Analytic MACs vs measured latency', xscale='log', yscale='log')
  ax.grid(True, alpha=0.3)
  path = _save(fig, path)
  plt.close(fig)
  return path


def plot_memory(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
  """Argument, output and temporary bytes per run and target, from memory analysis."""
  done = [r for r in rows if r['status'] == 'ok' and r.get('temp_bytes') is not None]
  if not done:
    return None
  plt = _figure()
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(done) + 2), 4.5))
  labels = [f"{_label(r)}\n{r['target']}" for r in done]
  bottom = [0.0] * len(done)
  for key, name in (('argument_bytes', 'arguments'), ('output_bytes', 'outputs'),
                    ('temp_bytes', 'temporaries')):
    values = [(r.get(key) or 0) / 2**20 for r in done]
    ax.bar(range(len(done)), values, bottom=bottom, label=name)
    bottom = [b + v for b, v in zip(bottom, values)]
  ax.set_xticks(range(len(done)), labels, rotation=60, ha='right', fontsize=7)
  ax.set(ylabel='MiB', title='Compiled memory per run and target')
  ax.legend(fontsize=8)
  path = _save(fig, path)
  plt.close(fig)
  return path


def plot_roofline(rows: Sequence[dict[str, Any]], peaks: dict[str, dict[str, Any]],
                  path: Path) -> Path | None:
  """Each timed run placed at (flops per compulsory byte, achieved GFLOP/s) under the roofline.

  The roof is min(peak matmul FLOP/s, intensity x copy bandwidth), drawn for the smallest
  and largest working set measured (cache-resident and DRAM bandwidth).
  """
  timed = [r for r in rows if r.get('achieved_gflops') and r.get('roofline_intensity')
           and r['target'] in peaks]
  if not timed:
    return None
  plt = _figure()
  fig, ax = plt.subplots(figsize=(8, 5))
  xs = [r['roofline_intensity'] for r in timed]
  lo, hi = min(xs + [0.1]) / 2, max(xs + [100.0]) * 2
  grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
  for name, p in peaks.items():
    peak = max(p['gflops_per_s'].values())
    sizes = sorted(p['copy_gb_per_s'], key=lambda k: int(k))
    for size, style in ((sizes[0], ':'), (sizes[-1], '-')):
      bw = p['copy_gb_per_s'][size]
      ax.plot(grid, [min(peak, x * bw) for x in grid], style, color='gray',
              label=f"{name} roof: {peak:.0f} GFLOP/s, copy {bw:.1f} GB/s "
                    f"({int(size) / 2**20:.0f} MiB)")
  markers = {'model': 'o', 'layer': 's'}
  kinds = {}
  for r in timed:
    kind = r.get('kind', 'model')
    key = (kind, r.get('strategy') if kind == 'layer' else None)
    label = f"{kind}s" + (f" [{key[1]}]" if key[1] else '')
    handle = ax.scatter(r['roofline_intensity'], r['achieved_gflops'], marker=markers.get(kind, 'o'),
                        s=28, color=f"C{len(kinds) if key not in kinds else kinds[key]}",
                        label=None if key in kinds else label)
    kinds.setdefault(key, len(kinds))
    del handle
    short = r['model'].split('/')[-1]
    ax.annotate(short, (r['roofline_intensity'], r['achieved_gflops']), fontsize=6, xytext=(3, 2),
                textcoords='offset points')
  ax.set(xscale='log', yscale='log', xlabel='compiled flops / compulsory byte (arguments + outputs)',
         ylabel='achieved GFLOP/s', title='Roofline (peaks measured on this machine)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7, loc='lower right')
  path = _save(fig, path)
  plt.close(fig)
  return path
