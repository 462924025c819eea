"""What every result records about where and with what it was produced."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import jax


def git_sha() -> str | None:
  """The commit of the sepnets checkout, or None outside a git checkout."""
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).resolve().parent,
                         capture_output=True, text=True, timeout=5, check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def run_metadata() -> dict[str, object]:
  versions = {}
  for name in ('sepnets', 'jax', 'jaxlib', 'flax', 'numpy'):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return {
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'cpu_count': os.cpu_count(),
      'machine': platform.machine(),
      'python': platform.python_version(),
      'versions': versions,
      'git_sha': git_sha(),
  }
