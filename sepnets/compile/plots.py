"""Plots of a bench run (matplotlib, written as PNG files)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sepnets.files import default_mode



def _figure():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: Path) -> Path:
  """Writes the PNG atomically (temporary file, then rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.png')
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=90, bbox_inches='tight')
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)
  finally:
    Path(tmp).unlink(missing_ok=True)
  return path


def _label(r: dict[str, Any]) -> str:
  return f"{r['model']} {r['mode']} b{r['batch']} {r['dtype'].replace('float', 'f').replace('bfloat16', 'bf16')}"


def plot_macs_vs_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
  """Analytic MACs against measured CPU latency: the depthwise 'FLOPs trap' shows as scatter."""
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
         title='Analytic MACs vs measured latency')
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
