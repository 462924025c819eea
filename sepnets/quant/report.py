"""The sensitivity report: sensitivity.json, sensitivity.md (tables and the measured verdict)
and sensitivity.png (SQNR per layer, coloured by layer type)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from sepnets.files import atomic_write_text, pyplot, save_figure

COLOURS = {'depthwise': 'tab:red', 'pointwise': 'tab:blue', 'standard': 'tab:green',
           'linear': 'tab:purple'}


def _db(value: float) -> str:
  return 'inf' if math.isinf(value) else f'{value:.1f}'


def markdown(result: dict[str, Any], title: str) -> str:
  names = result['settings']
  lines = [f'# {title}', '',
           f"Float accuracy {result['float_accuracy']:.4f} on {result['examples']} evaluation "
           f"images. Each layer is quantized alone (weights at the given bits, its input "
           f"activation at 8 bits, per tensor), the rest float; SQNR is of the network's logits "
           f"against the float model; spread is max / min of the BatchNorm-folded per-channel "
           f"weight ranges.", '', '## Verdict', '']
  for name in names:
    first = result['summary']['first_to_break'][name]
    worst = ', '.join(f'{layer} ({kind})' for layer, kind in
                      zip(first['worst_layers'][:3], first['worst_types'][:3]))
    verdict = 'yes' if first['depthwise_degrades_first'] else 'no'
    broken = ', '.join(f'{layer} ({kind}, {drop:+.1%})'
                       for layer, kind, drop in first['breaking_layers']) or 'none'
    lines.append(f"- **{name}**: depthwise layers degrade first: **{verdict}** (the lowest-SQNR "
                 f"layer is {first['worst_types'][0]}). Worst: {worst}. Layers that alone cost "
                 f"more than 1 point of accuracy: {broken}. Mean SQNR rank (0 = worst of "
                 f"{len(result['layers'])}): depthwise {first['depthwise_mean_rank']:.1f}, other "
                 f"layers {first['other_mean_rank']:.1f}.")
  lines += ['', '## All layers at once', '', '| setting | SQNR (dB) | accuracy |', '|---|---|---|']
  for name in names:
    r = result['all_layers'][name]
    lines.append(f"| {name} | {_db(r['sqnr_db'])} | {r['accuracy']:.4f} |")
  lines += ['', '## By layer type (medians)', '',
            '| type | layers | range spread | ' + ' | '.join(f'SQNR {n}' for n in names) + ' |',
            '|---|---|---|' + '---|' * len(names)]
  for kind, t in result['summary']['per_type'].items():
    lines.append(f"| {kind} | {t['layers']} | {t['median_range_spread']:.1f} | "
                 + ' | '.join(_db(t['median_sqnr_db'][n]) for n in names) + ' |')
  lines += ['', '## Per layer', '',
            '| # | layer | type | spread | ' + ' | '.join(f'{n} SQNR / Δacc' for n in names)
            + ' |', '|---|---|---|---|' + '---|' * len(names)]
  for row in result['layers']:
    cells = [f"{_db(row['settings'][n]['sqnr_db'])} / "
             f"{row['settings'][n]['accuracy'] - result['float_accuracy']:+.4f}" for n in names]
    lines.append(f"| {row['index']} | {row['layer']} | {row['type']} | "
                 f"{row['range_spread']:.1f} | " + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(result: dict[str, Any], path: str, title: str) -> None:
  plt = pyplot()
  names = result['settings']
  fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.6 * len(names)), sharex=True,
                           squeeze=False)
  rows = result['layers']
  for ax, name in zip(axes[:, 0], names):
    for kind, colour in COLOURS.items():
      points = [(r['index'], r['settings'][name]['sqnr_db']) for r in rows if r['type'] == kind]
      if points:
        xs, ys = zip(*points)
        ax.bar(xs, [min(y, 200) for y in ys], color=colour, label=kind)
    ax.set_ylabel(f'{name}\nSQNR (dB)')
    ax.grid(axis='y', alpha=0.3)
  axes[0, 0].legend(ncol=4, fontsize=8)
  axes[0, 0].set_title(title)
  axes[-1, 0].set_xlabel('layer (forward order)')
  save_figure(fig, path)
  plt.close(fig)


def write(result: dict[str, Any], out_dir: str, title: str) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, f'sensitivity.{name}') for name in ('json', 'md', 'png')}
  atomic_write_text(paths['json'], json.dumps(result, indent=2) + '\n')
  atomic_write_text(paths['md'], markdown(result, title))
  plot(result, paths['png'], title)
  return paths
